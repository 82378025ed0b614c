"""Procedural scenes for demos and tests: textured objects on textured backgrounds.

Everything is a pure function of a seed, so the same call gives the same pixels on every
machine. A `SceneStyle` (or its name in `STYLES`) says how hard a scene is:

    classic      muted, low-saturation wave backgrounds; each object a saturated colour with a
                 stripe texture. Learnable by a tiny model, but colour alone tells object from
                 background, so a model can score well by segmenting whatever is salient and
                 ignoring the first-frame mask.
    distractors  scenes that only the mask can solve: look-alikes (the first object's shape
                 family and texture kind in a colour a little off), objects in muted,
                 background-like colours, saturated backgrounds, several texture kinds, and
                 in videos objects whose paths cross in a random depth order (the occluded
                 parts of an object are not in its mask).
    lookalike_lanes
                 every object after the first a look-alike of it, each video object in its
                 own vertical strip (`lanes`) so they never touch: only the first-frame mask
                 says which one is meant (the scenes of `evaluation.mask_dependence`).

The label map holds every object (ids 1..N, palette-encodable), so any of them can be the
target: a model given object i's first mask must follow object i.

`render_image` / `render_video` return arrays; `write_procedural_images` and
`write_procedural_videos` write them in the layouts the real datasets use (image + mask
folders, DAVIS, YouTube-VOS), so the same readers are exercised.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.masks import davis_palette

__all__ = [
    "DAVIS_PALETTE",
    "STYLES",
    "TEXTURES",
    "SceneStyle",
    "render_image",
    "render_video",
    "scene_style",
    "write_procedural_images",
    "write_procedural_videos",
]

TEXTURES = ("stripes", "checks", "rings")


@dataclass(frozen=True)
class SceneStyle:
    """How objects and backgrounds are drawn; the defaults are the classic style.

    Chances are per object (per scene for the background, per video for crossing paths).
    """

    lookalike: float = 0.0  # an object after the first copies the first's style
    lookalike_distance: tuple[float, float] = (18.0, 40.0)  # RGB distance (0..255) of its colour
    muted_object: float = 0.0  # an object that is no look-alike gets a background-like colour
    saturated_background: float = 0.0  # the background gets a saturated colour
    textures: tuple[str, ...] = ("stripes",)  # texture kinds objects draw from
    crossing: float = 0.0  # videos: the objects' paths cross in the middle of the video
    lanes: bool = False  # videos: each object in its own vertical strip, so they never touch
    random_depth: bool = False  # videos: random depth order (else a higher id is in front)
    object_radius: tuple[float, float] | None = None  # fraction of the short side; None: classic
    speed: float = 0.03  # videos: largest speed per axis, fraction of the short side per frame

    def __post_init__(self):
        unknown = set(self.textures) - set(TEXTURES)
        if not self.textures or unknown:
            raise ValueError(f"textures must be some of {TEXTURES}, got {self.textures!r}")
        if self.lanes and self.crossing > 0:
            raise ValueError("lanes keep objects apart, crossing brings them together: pick one")


STYLES = {
    "classic": SceneStyle(),
    "distractors": SceneStyle(
        lookalike=0.6,
        muted_object=0.5,
        saturated_background=0.6,
        textures=TEXTURES,
        crossing=0.5,
        random_depth=True,
    ),
    "lookalike_lanes": SceneStyle(lookalike=1.0, object_radius=(0.16, 0.22), lanes=True),
}


def scene_style(style: str | SceneStyle) -> SceneStyle:
    """The style itself, or the one `STYLES` names; an unknown name is a one-line ValueError."""
    if isinstance(style, SceneStyle):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown scene style {style!r}; choose one of {', '.join(STYLES)}")
    return STYLES[style]


DAVIS_PALETTE = davis_palette().flatten().tolist()  # one palette: core.masks


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from an int (square) or a (width, height) pair."""
    if isinstance(size, int):
        return size, size
    width, height = size
    return int(width), int(height)


def _style_rng(seed: int, stream: int) -> np.random.Generator:
    """The draws a style adds, apart from the classic ones: classic scenes stay as they were."""
    return np.random.default_rng([seed, stream, 1])


# -- backgrounds --------------------------------------------------------------------------------


def _background(
    rng: np.random.Generator, height: int, width: int, saturated: bool = False, style_rng=None
) -> np.ndarray:
    """A wave texture, float32 [H, W, 3] in 0..255: muted, or saturated when asked."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = rng.uniform(0, 1)
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.25), rng.uniform(0.35, 0.6)))
    if saturated:
        base = np.array(
            colorsys.hsv_to_rgb(hue, style_rng.uniform(0.6, 0.95), style_rng.uniform(0.5, 0.9))
        )
    image = np.broadcast_to(base * 255, (height, width, 3)).astype(np.float32).copy()
    for _ in range(3):
        angle = rng.uniform(0, np.pi)
        wavelength = rng.uniform(0.1, 0.4) * max(height, width)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / wavelength + phase)
        image += wave[..., None] * rng.uniform(8, 20) * rng.uniform(0.7, 1.0, size=3)
    return image


# -- objects ------------------------------------------------------------------------------------


class _Shape:
    """A star-shaped blob: radius(theta) = r (1 + a sin(k theta + phi)), textured."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, radius_range):
        short = min(height, width)
        self.radius = rng.uniform(*radius_range) * short
        self.lobes = int(rng.integers(2, 6))
        self.amplitude = rng.uniform(0.1, 0.3)
        self.phase = rng.uniform(0, 2 * np.pi)
        self.aspect = rng.uniform(0.7, 1.3)
        hue = rng.uniform(0, 1)
        self.colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), 1.0)) * 255
        self.stripe_angle = rng.uniform(0, np.pi)
        self.stripe_period = rng.uniform(0.15, 0.35) * self.radius + 2
        self.texture = "stripes"

    def extent(self, wobble: float = 0.0) -> float:
        """Largest distance of the outline from the centre, at a given wobble."""
        return self.radius * (1 + self.amplitude * (1 + wobble)) / min(self.aspect, 1.0)

    def mask(self, yy, xx, centre, angle, wobble) -> np.ndarray:
        u, v = self._frame_coordinates(yy, xx, centre, angle)
        theta = np.arctan2(v, u)
        amplitude = self.amplitude * (1 + wobble)
        limit = self.radius * (1 + amplitude * np.sin(self.lobes * theta + self.phase))
        return u * u + v * v <= limit * limit

    def paint(self, image, mask, yy, xx, centre, angle) -> None:
        """Fill `mask` with the colour modulated by the texture, between 0.75x and 1x."""
        pattern = self._pattern(yy[mask], xx[mask], centre, angle)
        image[mask] = self.colour[None, :] * (0.75 + 0.25 * pattern[:, None])

    def _frame_coordinates(self, yy, xx, centre, angle):
        """Coordinates along the shape's own axes (v stretched by the aspect ratio)."""
        dy, dx = yy - centre[1], xx - centre[0]
        cos, sin = np.cos(angle), np.sin(angle)
        return cos * dx + sin * dy, (-sin * dx + cos * dy) * self.aspect

    def _pattern(self, yy, xx, centre, angle) -> np.ndarray:
        """The texture in [-1, 1] at the given pixels; it turns with the shape."""
        period = self.stripe_period
        if self.texture == "stripes":
            direction = self.stripe_angle + angle
            return np.sin(2 * np.pi * (np.cos(direction) * xx + np.sin(direction) * yy) / period)
        u, v = self._frame_coordinates(yy, xx, centre, angle + self.stripe_angle)
        if self.texture == "checks":
            return np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
        return np.sin(2 * np.pi * np.hypot(u, v) / period)  # rings


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A background-like colour: low saturation, middle brightness (0..255)."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.45, 0.8)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255


def _nearby_colour(colour: np.ndarray, rng: np.random.Generator, distance) -> np.ndarray:
    """A colour at an RGB distance in `distance` from `colour`, reflected back into 0..255."""
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(*distance)
    moved = colour + offset
    return np.where((moved < 0) | (moved > 255), colour - offset, moved).clip(0, 255)


def _restyle(shape: _Shape, first: _Shape | None, style: SceneStyle, rng) -> _Shape:
    """Apply the style to a classic shape: a look-alike of `first`, a muted colour, a texture."""
    if first is not None and rng.uniform() < style.lookalike:
        shape.radius = first.radius * rng.uniform(0.85, 1.15)
        shape.lobes, shape.texture = first.lobes, first.texture
        shape.amplitude = float(np.clip(first.amplitude + rng.uniform(-0.05, 0.05), 0.05, 0.35))
        shape.aspect = first.aspect * rng.uniform(0.9, 1.1)
        shape.stripe_period = first.stripe_period * shape.radius / first.radius
        shape.colour = _nearby_colour(first.colour, rng, style.lookalike_distance)
        return shape
    if rng.uniform() < style.muted_object:
        shape.colour = _muted_colour(rng)
    shape.texture = str(rng.choice(style.textures))
    return shape


def _shapes(rng, style_rng, style: SceneStyle, count, height, width, radius_range) -> list[_Shape]:
    """`count` shapes: the classic draws from `rng`, the style's on top from `style_rng`."""
    shapes: list[_Shape] = []
    for _ in range(count):
        shape = _Shape(rng, height, width, style.object_radius or radius_range)
        shapes.append(_restyle(shape, shapes[0] if shapes else None, style, style_rng))
    return shapes


# -- images -------------------------------------------------------------------------------------


def render_image(
    seed: int,
    size: int | tuple[int, int] = (160, 120),
    num_objects: int = 1,
    style: str | SceneStyle = "classic",
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 [H, W, 3], labels uint8 [H, W], 0 = background, 1..N objects).

    A later object is drawn over an earlier one where they overlap.
    """
    style = scene_style(style)
    width, height = _size(size)
    rng, style_rng = np.random.default_rng([seed, 1]), _style_rng(seed, 1)
    saturated = style_rng.uniform() < style.saturated_background
    image = _background(rng, height, width, saturated, style_rng)
    labels = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius_range = (0.18, 0.3) if num_objects == 1 else (0.12, 0.2)
    first: _Shape | None = None
    for object_id in range(1, num_objects + 1):
        shape = _Shape(rng, height, width, style.object_radius or radius_range)
        shape = _restyle(shape, first, style, style_rng)
        first = first or shape
        margin = shape.extent()
        centre = (
            rng.uniform(min(margin, width / 2), max(width - margin, width / 2)),
            rng.uniform(min(margin, height / 2), max(height - margin, height / 2)),
        )
        angle = rng.uniform(0, 2 * np.pi)
        mask = shape.mask(yy, xx, centre, angle, 0.0)
        shape.paint(image, mask, yy, xx, centre, angle)
        labels[mask] = object_id
    return np.clip(image, 0, 255).astype(np.uint8), labels


# -- videos -------------------------------------------------------------------------------------


@dataclass
class _Paths:
    """Where each object is on frame 0, how it moves and turns, and when it enters."""

    starts: list[np.ndarray]
    velocities: list[np.ndarray]
    spins: list[float]
    angles: list[float]
    first_frame: list[int]
    lanes: list[tuple[float, float]] | None = None  # each centre's x range, if kept apart

    def pose(self, index: int, t: int, width: int, height: int):
        x, y = self.starts[index] + self.velocities[index] * t
        low, high = self.lanes[index] if self.lanes else (0, width)
        centre = (_reflect(x, low, high), _reflect(y, 0, height))
        return centre, self.angles[index] + self.spins[index] * t


def _classic_paths(rng, count, num_frames, width, height, speed, late_object) -> _Paths:
    short = min(width, height)
    starts = [
        np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        for _ in range(count)
    ]
    velocities = [rng.uniform(-1, 1, size=2) * short * speed for _ in range(count)]
    spins = [rng.uniform(-0.08, 0.08) for _ in range(count)]
    angles = [rng.uniform(0, 2 * np.pi) for _ in range(count)]
    first_frame = [0] * count
    if late_object and count > 1:
        first_frame[-1] = max(1, num_frames // 3)
    return _Paths(starts, velocities, spins, angles, first_frame)


def _keep_apart(paths: _Paths, shapes: list[_Shape], rng, width: int) -> None:
    """Give each object its own vertical strip, in random order, with a pixel to spare on
    each side; a shape too wide for its strip is scaled down to fit."""
    lane_width = width / len(shapes)
    paths.lanes = [(0.0, 0.0)] * len(shapes)
    for lane, index in enumerate(rng.permutation(len(shapes))):
        shape, room = shapes[index], lane_width / 2 - 1
        if shape.extent(wobble=0.5) > room:
            shape.radius *= room / shape.extent(wobble=0.5)
        margin = shape.extent(wobble=0.5) + 1
        low = lane * lane_width + margin
        high = max(low, (lane + 1) * lane_width - margin)  # equal when the shape just fits
        paths.lanes[index] = (low, high)
        paths.starts[index][0] = rng.uniform(low, high)


def _cross(paths: _Paths, rng, num_frames, width, height, speed) -> None:
    """Make every path pass near one point in the middle of the video, from different sides."""
    short = min(width, height)
    meet_time = rng.uniform(0.35, 0.65) * (num_frames - 1)
    meet = np.array([rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height])
    heading = rng.uniform(0, 2 * np.pi)
    for index in range(len(paths.starts)):
        if index > 0:
            heading += rng.uniform(0.6, 1.4) * np.pi
        velocity = np.array([np.cos(heading), np.sin(heading)]) * short * speed
        near = meet + rng.normal(0, 0.05 * short, size=2)
        paths.velocities[index] = velocity
        paths.starts[index] = near - velocity * meet_time


def render_video(
    seed: int,
    num_frames: int,
    size: int | tuple[int, int] = (160, 120),
    num_objects: int = 2,
    late_object: bool = False,
    style: str | SceneStyle = "classic",
) -> tuple[np.ndarray, np.ndarray]:
    """Objects moving, turning, deforming and occluding each other over a drifting background.

    Returns frames uint8 [T, H, W, 3] and labels uint8 [T, H, W] (object i has label i; an
    object's mask holds only its visible pixels). In the classic style a higher label is in
    front; a style with `random_depth` draws the depth order. With `late_object` the last
    object enters a third of the way in, as objects do in YouTube-VOS.
    """
    style = scene_style(style)
    width, height = _size(size)
    rng, style_rng = np.random.default_rng([seed, 2]), _style_rng(seed, 2)
    pad = max(width, height) // 8
    saturated = style_rng.uniform() < style.saturated_background
    background = _background(rng, height + 2 * pad, width + 2 * pad, saturated, style_rng)
    drift = rng.uniform(-1, 1, size=2) * pad / max(num_frames, 1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shapes = _shapes(rng, style_rng, style, num_objects, height, width, (0.12, 0.2))
    paths = _classic_paths(rng, num_objects, num_frames, width, height, style.speed, late_object)
    if style_rng.uniform() < style.crossing and num_objects > 1:
        _cross(paths, style_rng, num_frames, width, height, style.speed)
    elif style.lanes and num_objects > 1:
        _keep_apart(paths, shapes, style_rng, width)
    depth = style_rng.permutation(num_objects) if style.random_depth else range(num_objects)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        offset = np.round(pad + drift * t).astype(int)
        image = background[offset[1] : offset[1] + height, offset[0] : offset[0] + width].copy()
        for index in depth:  # back to front
            if t < paths.first_frame[index]:
                continue
            centre, angle = paths.pose(index, t, width, height)
            wobble = 0.5 * np.sin(0.4 * t + index)
            mask = shapes[index].mask(yy, xx, centre, angle, wobble)
            shapes[index].paint(image, mask, yy, xx, centre, angle)
            labels[t][mask] = index + 1
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, labels


def _reflect(value: float, low: float, high: float) -> float:
    """Reflect a coordinate into [low, high] (objects bounce off the borders)."""
    span = high - low
    if span <= 0:
        return low
    value = (value - low) % (2 * span)
    return low + (2 * span - value if value > span else value)


# -- files --------------------------------------------------------------------------------------


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, "JPEG", quality=92)


def _save_mask(labels: np.ndarray, path: Path, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        mask = Image.fromarray(labels, "P")
        mask.putpalette(DAVIS_PALETTE)
    else:
        mask = Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), "L")
    mask.save(path, "PNG")


def write_procedural_images(
    root: str | Path,
    n: int,
    seed: int = 0,
    size: int | tuple[int, int] = (160, 120),
    layout: str = "separate",
) -> Path:
    """Write `n` image + mask pairs (masks 0/255) as the saliency datasets ship them.

    layout "separate": `root/images/xxxx.jpg` and `root/masks/xxxx.png` (ECSSD, HKU-IS, DUTS);
    layout "same": `root/xxxx.jpg` beside `root/xxxx.png` (MSRA10K).
    """
    if layout not in ("separate", "same"):
        raise ValueError(f"layout must be 'separate' or 'same', got {layout!r}")
    root = Path(root)
    image_dir, mask_dir = (
        (root / "images", root / "masks") if layout == "separate" else (root, root)
    )
    for index in range(n):
        image, labels = render_image(seed * 1_000_003 + index, size)
        _save_jpeg(image, image_dir / f"{index:05d}.jpg")
        _save_mask(labels, mask_dir / f"{index:05d}.png", palette=False)
    return root


def write_procedural_videos(
    root: str | Path,
    n_sequences: int,
    n_frames: int,
    seed: int = 0,
    size: int | tuple[int, int] = (160, 120),
    layout: str = "davis",
    num_objects: int = 2,
    style: str | SceneStyle = "classic",
) -> Path:
    """Write `n_sequences` videos in the DAVIS or YouTube-VOS layout with palette masks.

    davis:   `root/JPEGImages/480p/<seq>/00000.jpg`, `root/Annotations/480p/<seq>/00000.png`,
             every frame annotated.
    youtube: `root/JPEGImages/<video>/00000.jpg`, `root/Annotations/<video>/00000.png` on every
             fifth frame only, and the last object enters late.
    """
    if layout not in ("davis", "youtube"):
        raise ValueError(f"layout must be 'davis' or 'youtube', got {layout!r}")
    root = Path(root)
    youtube = layout == "youtube"
    images, annotations = (
        (root / "JPEGImages", root / "Annotations")
        if youtube
        else (root / "JPEGImages" / "480p", root / "Annotations" / "480p")
    )
    for index in range(n_sequences):
        name = f"{'vid' if youtube else 'seq'}{index:03d}"
        frames, labels = render_video(
            seed * 1_000_003 + index,
            n_frames,
            size,
            num_objects=num_objects,
            late_object=youtube,
            style=style,
        )
        for t in range(n_frames):
            _save_jpeg(frames[t], images / name / f"{t:05d}.jpg")
            if not youtube or t % 5 == 0:
                _save_mask(labels[t], annotations / name / f"{t:05d}.png", palette=True)
    return root
