"""Procedural scenes for demos and tests: textured objects on textured backgrounds.

Everything is a pure function of a seed, so the same call gives the same pixels on every
machine. The scenes are made to be learnable by a tiny model: backgrounds are muted,
low-saturation wave textures; objects are saturated colours with a stripe texture, so
colour and texture both tell object from background.

`render_image` / `render_video` return arrays; `write_procedural_images` and
`write_procedural_videos` write them in the layouts the real datasets use (image + mask
folders, DAVIS, YouTube-VOS), so the same readers are exercised.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DAVIS_PALETTE",
    "render_image",
    "render_video",
    "write_procedural_images",
    "write_procedural_videos",
]


def _davis_palette() -> list[int]:
    """The PASCAL/DAVIS colour map: index i gets the colour DAVIS uses for object i."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


DAVIS_PALETTE = _davis_palette()


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from an int (square) or a (width, height) pair."""
    if isinstance(size, int):
        return size, size
    width, height = size
    return int(width), int(height)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted wave texture, float32 [H, W, 3] in 0..255."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = rng.uniform(0, 1)
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.25), rng.uniform(0.35, 0.6)))
    image = np.broadcast_to(base * 255, (height, width, 3)).astype(np.float32).copy()
    for _ in range(3):
        angle = rng.uniform(0, np.pi)
        wavelength = rng.uniform(0.1, 0.4) * max(height, width)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / wavelength + phase)
        image += wave[..., None] * rng.uniform(8, 20) * rng.uniform(0.7, 1.0, size=3)
    return image


class _Shape:
    """A star-shaped blob: radius(theta) = r (1 + a sin(k theta + phi)), striped, saturated."""

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

    def extent(self) -> float:
        """Largest distance of the outline from the centre (without wobble)."""
        return self.radius * (1 + self.amplitude) / min(self.aspect, 1.0)

    def mask(self, yy, xx, centre, angle, wobble) -> np.ndarray:
        dy, dx = yy - centre[1], xx - centre[0]
        cos, sin = np.cos(angle), np.sin(angle)
        u, v = cos * dx + sin * dy, (-sin * dx + cos * dy) * self.aspect
        theta = np.arctan2(v, u)
        amplitude = self.amplitude * (1 + wobble)
        limit = self.radius * (1 + amplitude * np.sin(self.lobes * theta + self.phase))
        return u * u + v * v <= limit * limit

    def paint(self, image, mask, yy, xx, angle) -> None:
        direction = self.stripe_angle + angle
        stripes = np.sin(
            2 * np.pi * (np.cos(direction) * xx + np.sin(direction) * yy) / self.stripe_period
        )
        texture = self.colour[None, :] * (0.75 + 0.25 * stripes[mask][:, None])
        image[mask] = texture


def render_image(
    seed: int, size: int | tuple[int, int] = (160, 120), num_objects: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 [H, W, 3], labels uint8 [H, W], 0 = background, 1..N objects)."""
    width, height = _size(size)
    rng = np.random.default_rng([seed, 1])
    image = _background(rng, height, width)
    labels = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius_range = (0.18, 0.3) if num_objects == 1 else (0.12, 0.2)
    for object_id in range(1, num_objects + 1):
        shape = _Shape(rng, height, width, radius_range)
        margin = shape.extent()
        centre = (
            rng.uniform(min(margin, width / 2), max(width - margin, width / 2)),
            rng.uniform(min(margin, height / 2), max(height - margin, height / 2)),
        )
        angle = rng.uniform(0, 2 * np.pi)
        mask = shape.mask(yy, xx, centre, angle, 0.0)
        shape.paint(image, mask, yy, xx, angle)
        labels[mask] = object_id
    return np.clip(image, 0, 255).astype(np.uint8), labels


def render_video(
    seed: int,
    num_frames: int,
    size: int | tuple[int, int] = (160, 120),
    num_objects: int = 2,
    late_object: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Objects moving, turning, deforming and occluding each other over a drifting background.

    Returns frames uint8 [T, H, W, 3] and labels uint8 [T, H, W] (object i has label i; a
    higher label is in front). With `late_object` the last object enters a third of the
    way in, as objects do in YouTube-VOS.
    """
    width, height = _size(size)
    rng = np.random.default_rng([seed, 2])
    pad = max(width, height) // 8
    background = _background(rng, height + 2 * pad, width + 2 * pad)
    drift = rng.uniform(-1, 1, size=2) * pad / max(num_frames, 1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shapes = [_Shape(rng, height, width, (0.12, 0.2)) for _ in range(num_objects)]
    starts = [
        np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height]) for _ in shapes
    ]
    velocities = [rng.uniform(-1, 1, size=2) * min(width, height) * 0.03 for _ in shapes]
    spins = [rng.uniform(-0.08, 0.08) for _ in shapes]
    angles = [rng.uniform(0, 2 * np.pi) for _ in shapes]
    first_frame = [0] * num_objects
    if late_object and num_objects > 1:
        first_frame[-1] = max(1, num_frames // 3)

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        offset = np.round(pad + drift * t).astype(int)
        image = background[offset[1] : offset[1] + height, offset[0] : offset[0] + width].copy()
        for index, shape in enumerate(shapes):
            if t < first_frame[index]:
                continue
            centre = _bounce(starts[index] + velocities[index] * t, width, height)
            angle = angles[index] + spins[index] * t
            wobble = 0.5 * np.sin(0.4 * t + index)
            mask = shape.mask(yy, xx, centre, angle, wobble)
            shape.paint(image, mask, yy, xx, angle)
            labels[t][mask] = index + 1
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, labels


def _bounce(position: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """Reflect a position into the frame (objects bounce off the borders)."""
    out = []
    for value, limit in zip(position, (width, height), strict=True):
        period = 2 * limit
        value = value % period
        out.append(period - value if value > limit else value)
    return out[0], out[1]


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
            seed * 1_000_003 + index, n_frames, size, num_objects=num_objects, late_object=youtube
        )
        for t in range(n_frames):
            _save_jpeg(frames[t], images / name / f"{t:05d}.jpg")
            if not youtube or t % 5 == 0:
                _save_mask(labels[t], annotations / name / f"{t:05d}.png", palette=True)
    return root
