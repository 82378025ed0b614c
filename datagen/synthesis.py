"""Training clips from one image (pre-training) or from a video (fine-tuning).

Each output frame is made with ONE sampling grid at the output size that composes, from the
output backwards to the source:

    p   output pixel, normalised to [-1, 1]
    p'  = TPS(p)                         thin-plate spline on P x P control points c with
                                         random offsets d: TPS(c) = c + d (kornia)
    x   = centre + R(-theta) (o + (p' + 1) S / 2 - canvas / 2) / (r0 s)
                                         crop offset o inside the rotated, scaled canvas,
                                         rotation theta, scale s, base resize r0 (sources
                                         with a short side under S are enlarged first;
                                         with `fit_source` every source is scaled to S)

The map is evaluated on a coarse G x G grid and upsampled bilinearly to S x S (the affine
part is linear, so that is exact for it; the spline is smooth). Image and mask are sampled
with the same grid (bilinear for the image, nearest for the mask), all frames in one batch,
so frames and masks stay aligned.

The crop is placed at random among the positions that keep the object's centre inside it
(any position when there is none). A frame whose object still leaves the crop or becomes
too small (checked on a 64 x 64 version of the crop, so redraws are cheap) is drawn again:
an image clip redraws only that frame, a video clip the whole clip, since its crop is
shared. All random draws come from one `torch.Generator` seeded with the clip's seed, and
the clip's JSON record holds the parameters, so a clip is regenerated exactly from
(source, seed) with the same library versions.

Speed (CPU, one thread, 384 px from 854 x 480): the coarse map is upsampled with two small
matrix products instead of `F.interpolate`, frames stay planar uint8 (no HWC copy), and a
source is decoded and converted to float once for all its clips (`prepare_image`).

**Video windows.** Videos are not cut into fixed clips here: a video becomes overlapping
*windows* of consecutive annotated frames (`window_positions`), each stored resized so that
its shorter side is `(1 + window_margin) x size` (room for the reader's crop jitter) with its
frames' raw video frame indices (`make_video_window`). The reader draws a fresh 3-frame clip
from a window every epoch (`draw_window_frames`), with gaps counted in raw frames, so on
YouTube-VOS (annotated every 5th frame) a gap of 5 is the next annotated frame.
"""

from __future__ import annotations

import bisect
import functools
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.conversions import angle_to_rotation_matrix
from kornia.geometry.transform import get_tps_transform, warp_points_tps
from kornia.utils import create_meshgrid
from PIL import Image

from datagen.sources import SIZE_MISMATCH, BadInput

__all__ = [
    "NO_OBJECT_IN_WINDOW",
    "NO_VALID_CROP",
    "VIDEO_SETTINGS",
    "Clip",
    "ClipSettings",
    "FrameParams",
    "PreparedFrames",
    "SynthesisFailed",
    "VideoWindow",
    "add_background_regions",
    "choose_video_frames",
    "clip_generator",
    "draw_window_frames",
    "make_video_window",
    "prepare_frames",
    "prepare_image",
    "sampling_grids",
    "synthesize_image_clip",
    "synthesize_video_clip",
    "window_positions",
    "window_short_side",
]

NO_VALID_CROP = "no valid crop"
NO_OBJECT_IN_WINDOW = "no object in window"


class SynthesisFailed(Exception):
    """No draw kept the object in the crop within `max_attempts`."""


@dataclass(frozen=True)
class ClipSettings:
    """How clips are drawn. Image clips use the defaults; video clips use milder ranges."""

    size: int = 384
    num_frames: int = 3
    rotation: tuple[float, float] = (-30.0, 30.0)  # degrees
    scale: tuple[float, float] = (0.75, 1.25)
    tps_strength: float = 0.08  # largest control-point offset, in units of half the crop
    tps_points: int = 4  # control points per side
    grid_points: int = 17  # coarse grid points per side before upsampling
    min_object_area: float = 0.01  # fraction of the crop the object must cover in a frame
    min_visible: float = 0.5  # fraction of the object (or of the crop) that must be visible
    max_attempts: int = 20
    max_skip: int = 25  # video: largest gap between a clip's frames (windows: in raw frames)
    window_stride: int | None = None  # video: raw frames between window starts (None: max_skip)
    window_margin: float = 0.15  # video: windows' shorter side is (1 + margin) x size
    background_regions: int = 0  # images: background regions added as objects to follow
    fit_source: bool = False  # scale every source to a shorter side of `size` (else enlarge only)


VIDEO_SETTINGS = ClipSettings(rotation=(-10.0, 10.0), scale=(0.9, 1.1), tps_strength=0.0)


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [T, 3, S, S] (planar RGB, as torch lays images out)
    labels: np.ndarray  # uint8 [T, S, S], 0 = background
    record: dict  # JSON-able: source, seed, per-frame parameters


@dataclass
class FrameParams:
    """Random draws for a batch of frames (float64)."""

    rotation: torch.Tensor  # [B] degrees
    scale: torch.Tensor  # [B]
    crop: torch.Tensor  # [B, 2] position of the crop in the canvas, as a fraction of the free room
    tps: torch.Tensor  # [B, P*P, 2] control-point offsets

    def select(self, index: torch.Tensor) -> FrameParams:
        return FrameParams(
            self.rotation[index], self.scale[index], self.crop[index], self.tps[index]
        )

    def update(self, index: torch.Tensor, other: FrameParams) -> None:
        self.rotation[index], self.scale[index] = other.rotation, other.scale
        self.crop[index], self.tps[index] = other.crop, other.tps


def clip_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def _uniform(generator, low: float, high: float, *shape) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _draw(
    generator: torch.Generator, count: int, settings: ClipSettings, shared_crop: bool
) -> FrameParams:
    rotation = _uniform(generator, *settings.rotation, count)
    scale = _uniform(generator, *settings.scale, count)
    crop = _uniform(generator, 0.0, 1.0, 1 if shared_crop else count, 2).expand(count, 2).clone()
    points = settings.tps_points**2
    strength = settings.tps_strength
    tps = _uniform(generator, -strength, strength, count, points, 2)
    return FrameParams(rotation, scale, crop, tps)


@functools.lru_cache(maxsize=8)
def _coarse_points(grid_points: int, size: int) -> torch.Tensor:
    """G x G points from the first to the last output pixel centre, normalised: [G*G, 2]."""
    edge = 1.0 - 1.0 / size
    grid = create_meshgrid(
        grid_points, grid_points, normalized_coordinates=True, dtype=torch.float64
    )
    return grid.reshape(-1, 2) * edge


@functools.lru_cache(maxsize=8)
def _upsampling_matrix(size: int, grid_points: int) -> torch.Tensor:
    """[S, G] weights of linear interpolation from G points to S points (ends aligned)."""
    position = torch.linspace(0, grid_points - 1, size, dtype=torch.float64)
    low = position.floor().clamp(max=grid_points - 2).long()
    weight = position - low
    matrix = torch.zeros(size, grid_points, dtype=torch.float64)
    rows = torch.arange(size)
    matrix[rows, low] = 1 - weight
    matrix[rows, low + 1] += weight
    return matrix.float()


@functools.lru_cache(maxsize=8)
def _control_points(points_per_side: int) -> torch.Tensor:
    return create_meshgrid(points_per_side, points_per_side, dtype=torch.float64).reshape(-1, 2)


def _crop_offsets(
    params: FrameParams, canvas: torch.Tensor, centre: torch.Tensor | None, size: int
) -> torch.Tensor:
    """Where the crop sits in the canvas, [B, 2] pixels.

    The crop is placed at a random position (fraction `params.crop`) among those that keep
    the object's centre inside the crop, away from its border by a tenth of the crop; when
    none exists, among all positions; a canvas smaller than the crop is centred.
    """
    room = canvas - size
    low, high = torch.zeros_like(room), room.clamp(min=0)
    if centre is not None:
        margin = 0.1 * size
        object_low = torch.maximum(low, centre - (size - margin))
        object_high = torch.minimum(high, centre - margin)
        usable = object_low <= object_high
        low, high = torch.where(usable, object_low, low), torch.where(usable, object_high, high)
    offset = low + params.crop * (high - low)
    return torch.where(room >= 0, offset, room / 2)


def _base_scale(settings: ClipSettings, height: int, width: int) -> float:
    """r0: sources with a shorter side under the clip size are enlarged to it; with
    `fit_source` every source is scaled to it, so that a crop sees about the whole frame, as
    a model running at its training size sees a video (`VideoSegmenter`'s internal size)."""
    fit = settings.size / min(height, width)
    return fit if settings.fit_source else max(1.0, fit)


def _coarse_map(
    params: FrameParams,
    source_hw: tuple[int, int],
    settings: ClipSettings,
    centroids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed backward map on the coarse grid, normalised source coordinates.

    Returns (map [B, 2, G, G], crop offsets [B, 2]). `centroids` [B, 2] are the object
    centres in source pixels (None: crop anywhere).
    """
    height, width = source_hw
    size, batch, grid_points = settings.size, params.rotation.shape[0], settings.grid_points
    points = _coarse_points(grid_points, size).expand(batch, -1, -1)

    if settings.tps_strength > 0:
        control = _control_points(settings.tps_points).expand(batch, -1, -1)
        moved = control + params.tps
        kernel_weights, affine_weights = get_tps_transform(control, moved)
        points = warp_points_tps(points, moved, kernel_weights, affine_weights)

    base = _base_scale(settings, height, width)
    total_scale = (base * params.scale)[:, None]  # [B, 1]
    rotation = angle_to_rotation_matrix(params.rotation)  # R(theta), [B, 2, 2]
    cos, sin = rotation[:, 0, 0].abs(), rotation[:, 0, 1].abs()
    canvas = total_scale * torch.stack([width * cos + height * sin, width * sin + height * cos], -1)
    source_centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)

    centre = None
    if centroids is not None:  # the object's centre carried forward into the canvas
        centre = (
            torch.einsum("bij,bj->bi", rotation, centroids - source_centre) * total_scale
            + canvas / 2
        )
    offset = _crop_offsets(params, canvas, centre, size)

    canvas_xy = offset[:, None, :] + (points + 1) * (size / 2) - canvas[:, None, :] / 2
    # R(theta)^T = R(-theta) undoes the rotation; dividing by the scale undoes the zoom.
    source_xy = (
        torch.einsum("bji,bnj->bni", rotation, canvas_xy) / total_scale[:, :, None] + source_centre
    )
    normalised = source_xy * torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64) - 1
    return normalised.reshape(batch, grid_points, grid_points, 2).permute(
        0, 3, 1, 2
    ).float(), offset


def _dense(coarse: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear upsampling of the coarse map to a [B, R, R, 2] grid, as two small matrix
    products (U map U^T, much faster than F.interpolate on CPU)."""
    upsample = _upsampling_matrix(resolution, coarse.shape[-1])
    return (upsample @ coarse @ upsample.T).permute(0, 2, 3, 1)


def sampling_grids(
    params: FrameParams,
    source_hw: tuple[int, int],
    settings: ClipSettings,
    centroids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The composed backward map for each frame: float32 [B, S, S, 2] for `grid_sample`."""
    coarse, _ = _coarse_map(params, source_hw, settings, centroids)
    return _dense(coarse, settings.size)


def _frame_ok(
    mask_area: torch.Tensor, expected_area: torch.Tensor, settings: ClipSettings
) -> torch.Tensor:
    crop_area = float(settings.size**2)
    big_enough = mask_area >= settings.min_object_area * crop_area
    visible = mask_area >= settings.min_visible * torch.clamp(expected_area, max=crop_area)
    return big_enough & visible


CHECK_RESOLUTION = 64  # masks are checked on a 64 x 64 version of the crop (cheap redraws)


@dataclass
class PreparedFrames:
    """Source frames as tensors, ready to be warped many times (decode and convert once)."""

    images: torch.Tensor  # float32 [N, 3, H, W] in 0..255 (N = 1 for an image, 3 for a video clip)
    masks: torch.Tensor  # float32 [N, 1, H, W] object ids
    areas: torch.Tensor  # float64 [N] object pixels per frame
    centroids: torch.Tensor  # float64 [N, 2] object centre (x, y) in pixels (frame centre if none)
    source_size: tuple[int, int]  # (width, height) before any reduction
    reduce: int  # integer shrink factor applied to very large sources


def _centroid(labels: np.ndarray) -> tuple[float, float]:
    foreground = labels > 0
    columns, rows = foreground.sum(0), foreground.sum(1)
    total = columns.sum()
    if total == 0:
        return labels.shape[1] / 2, labels.shape[0] / 2
    x = float((columns * np.arange(labels.shape[1])).sum() / total) + 0.5
    y = float((rows * np.arange(labels.shape[0])).sum() / total) + 0.5
    return x, y


def add_background_regions(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """uint8 labels [H, W] with up to `count` more objects that are only background: each is
    one of the image's object masks moved to a random place, keeping the background pixels
    it covers (at least half of the mask, else it is drawn again, 10 times at most).

    Warped with the image, such a region is a target that only its mask names (texture, not
    an object), so a model trained on it must follow the mask it is given: moving a
    first-frame mask onto the background must move the prediction.
    """
    objects = _objects(labels)
    if count <= 0 or not objects:
        return labels
    rng = np.random.default_rng(seed & 0x7FFF_FFFF_FFFF_FFFF)
    out, height, width = labels.copy(), *labels.shape
    for new_id in range(max(objects) + 1, min(max(objects) + 1 + count, 256)):
        for _ in range(10):
            ys, xs = np.nonzero(labels == objects[rng.integers(len(objects))])
            dy = rng.integers(-ys.min(), height - ys.max())  # the moved mask stays in the image
            dx = rng.integers(-xs.min(), width - xs.max())
            moved_ys, moved_xs = ys + dy, xs + dx
            free = out[moved_ys, moved_xs] == 0
            if (dy or dx) and free.sum() >= max(0.5 * len(ys), 0.005 * height * width):
                out[moved_ys[free], moved_xs[free]] = new_id
                break
    return out


def prepare_frames(
    images: list[np.ndarray], labels: list[np.ndarray], size: int, fit: bool = False
) -> PreparedFrames:
    """uint8 [H, W, 3] images and uint8 [H, W] labels -> `PreparedFrames` for output `size`
    (with `fit`, for sources that will be scaled to a shorter side of `size`)."""
    height, width = images[0].shape[:2]
    reduced = [_reduce(image, mask, size, fit) for image, mask in zip(images, labels, strict=True)]
    small_height, small_width = reduced[0][1].shape
    image_t = torch.empty(len(reduced), 3, small_height, small_width)
    mask_t = torch.empty(len(reduced), 1, small_height, small_width)
    for index, (image, mask, _) in enumerate(reduced):  # convert and go planar in one copy
        image_t[index].copy_(_read_only_tensor(image).permute(2, 0, 1))
        mask_t[index, 0].copy_(_read_only_tensor(mask))
    return PreparedFrames(
        images=image_t,
        masks=mask_t,
        areas=torch.tensor([float(np.count_nonzero(r[1])) for r in reduced], dtype=torch.float64),
        centroids=torch.tensor([_centroid(r[1]) for r in reduced], dtype=torch.float64),
        source_size=(int(width), int(height)),
        reduce=reduced[0][2],
    )


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of a (possibly read-only, as PIL gives) array that is only read from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def prepare_image(
    image: np.ndarray, labels: np.ndarray, size: int, fit: bool = False
) -> PreparedFrames:
    return prepare_frames([image], [labels], size, fit)


def _select(
    prepared: PreparedFrames, frames: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, masks and areas for output `frames` (one shared source, or one source per frame)."""
    if prepared.images.shape[0] == 1:
        count = len(frames)
        return (
            prepared.images.expand(count, -1, -1, -1),
            prepared.masks.expand(count, -1, -1, -1),
            prepared.areas.expand(count),
        )
    index = torch.tensor(frames)
    return prepared.images[index], prepared.masks[index], prepared.areas[index]


def _centroids(prepared: PreparedFrames, frames: list[int], shared_crop: bool) -> torch.Tensor:
    """Object centres that place the crops: frame 0's for a shared (video) crop."""
    if shared_crop or prepared.images.shape[0] == 1:
        return prepared.centroids[[0] * len(frames)]
    return prepared.centroids[frames]


def _warp(
    prepared: PreparedFrames,
    settings: ClipSettings,
    generator: torch.Generator,
    *,
    shared_crop: bool,
) -> tuple[np.ndarray, np.ndarray, FrameParams, torch.Tensor, int]:
    """Warp the frames, redrawing frames whose object is lost; uint8 outputs.

    Draws are checked on a small version of the crop; only the accepted ones are rendered at
    full size. With `shared_crop` (videos) all frames share one crop and only frame 0 must
    show an object; a failure redraws the whole clip. Otherwise every frame must show the
    object and only failing frames are redrawn.
    Returns (frames [T, 3, S, S], labels [T, S, S], params, crop offsets [T, 2], attempts).
    """
    count, size = settings.num_frames, settings.size
    _, _, height, width = prepared.images.shape
    base = _base_scale(settings, height, width)
    params = _draw(generator, count, settings, shared_crop)
    check_scale = (CHECK_RESOLUTION / size) ** 2
    accepted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # frame -> (coarse map, crop)
    pending = list(range(count))
    attempts = 0
    while pending:
        attempts += 1
        if attempts > settings.max_attempts:
            raise SynthesisFailed(f"object lost from the crop in {settings.max_attempts} attempts")
        if attempts > 1:
            params.update(
                torch.tensor(pending), _draw(generator, len(pending), settings, shared_crop)
            )
        index = torch.tensor(pending)
        centroids = _centroids(prepared, pending, shared_crop)
        coarse, offsets = _coarse_map(params.select(index), (height, width), settings, centroids)
        _, masks, areas = _select(prepared, pending)
        small = F.grid_sample(
            masks, _dense(coarse, CHECK_RESOLUTION), mode="nearest", align_corners=False
        )
        area = (small > 0).flatten(1).sum(1).double() / check_scale
        ok = _frame_ok(area, areas * (base * params.scale[index]) ** 2, settings)
        if shared_crop:
            ok = ok[:1].expand(len(pending))
        for position, frame in enumerate(pending):
            if ok[position]:
                accepted[frame] = (coarse[position], offsets[position])
        pending = [frame for frame in pending if frame not in accepted]

    everything = list(range(count))
    grid = _dense(torch.stack([accepted[frame][0] for frame in everything]), size)
    images, masks, _ = _select(prepared, everything)
    frames = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # bilinear weights are convex, so values stay in 0..255: +0.5 and truncation rounds
    frames_u8 = frames.add_(0.5).to(torch.uint8).numpy()
    labels_u8 = labels[:, 0].to(torch.uint8).numpy()
    offsets = torch.stack([accepted[frame][1] for frame in everything])
    return frames_u8, labels_u8, params, offsets, attempts


def _reduce(
    image: np.ndarray, labels: np.ndarray, size: int, fit: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """Shrink very large sources by an integer factor (box filter) so sampling does not alias:
    to a shorter side of at least 2 x size, or with `fit` (the warp then shrinks it to
    `size`) at least size."""
    factor = min(image.shape[:2]) // (size if fit else 2 * size)
    if factor < 2:
        return image, labels, 1
    small = np.asarray(Image.fromarray(image).reduce(factor))
    small_labels = np.asarray(
        Image.fromarray(labels).resize((small.shape[1], small.shape[0]), Image.Resampling.NEAREST)
    )
    return small, small_labels, factor


def _frame_records(
    params: FrameParams, offsets: torch.Tensor, settings: ClipSettings
) -> list[dict]:
    """Per frame: rotation (degrees), scale, crop (x, y offset in the rotated, scaled canvas,
    pixels) and tps (control-point offsets, row-major on a P x P grid over the crop)."""
    records = []
    for rotation, scale, crop, tps in zip(
        params.rotation.tolist(),
        params.scale.tolist(),
        offsets.tolist(),
        params.tps.tolist(),
        strict=True,
    ):
        records.append(
            {
                "rotation": round(rotation, 6),
                "scale": round(scale, 6),
                "crop": [round(v, 3) for v in crop],
                "tps": [[round(v, 6) for v in point] for point in tps]
                if settings.tps_strength > 0
                else [],
            }
        )
    return records


def _objects(labels: np.ndarray) -> list[int]:
    return [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=1)) if v != 0]


def synthesize_image_clip(
    prepared: PreparedFrames, settings: ClipSettings, seed: int, source_id: str = ""
) -> Clip:
    """A clip of `settings.num_frames` independently warped views of one prepared image.

    Raises `SynthesisFailed` if the object cannot be kept in view.
    """
    generator = clip_generator(seed)
    frames, labels, params, offsets, attempts = _warp(
        prepared, settings, generator, shared_crop=False
    )
    record = {
        "kind": "image",
        "source": source_id,
        "seed": int(seed),
        "size": settings.size,
        "source_size": list(prepared.source_size),
        "source_reduce": prepared.reduce,
        "attempts": attempts,
        "objects": _objects(labels[0]),
        "frames": _frame_records(params, offsets, settings),
    }
    return Clip(frames, labels, record)


def choose_video_frames(
    num_frames: int, max_skip: int, generator: torch.Generator, count: int = 3
) -> tuple[list[int], int]:
    """`count` ordered positions among `num_frames` annotated frames, gaps of at most `max_skip`.

    The clip's skip S is drawn uniformly from 1..max_skip, each gap uniformly from 1..S, so
    small gaps are common and large ones possible. Returns (positions, largest gap).
    """
    if num_frames < count:
        raise ValueError(f"need {count} annotated frames, the video has {num_frames}")
    skip = int(torch.randint(1, max_skip + 1, (1,), generator=generator))
    gaps = [int(g) for g in torch.randint(1, skip + 1, (count - 1,), generator=generator)]
    while sum(gaps) > num_frames - 1:  # shrink the largest gap until the clip fits
        gaps[gaps.index(max(gaps))] -= 1
    start = int(torch.randint(0, num_frames - sum(gaps), (1,), generator=generator))
    positions = [start]
    for gap in gaps:
        positions.append(positions[-1] + gap)
    return positions, max(gaps)


def synthesize_video_clip(video, settings: ClipSettings, seed: int) -> Clip:
    """A clip of `settings.num_frames` temporally ordered annotated frames of `video`.

    `video` has `frame_indices()` and `load_frame(position)` (see `datagen.sources`). The
    first frame must show an object; objects that appear only later are kept in the masks
    (the reader drops them, since they cannot be tracked from frame 0).
    """
    generator = clip_generator(seed)
    indices = video.frame_indices()
    draws = 0
    while True:  # frame 0 must show an object (late objects: YouTube-VOS)
        draws += 1
        if draws > settings.max_attempts:
            raise SynthesisFailed(f"no object on the first frame in {settings.max_attempts} draws")
        positions, skip = choose_video_frames(
            len(indices), settings.max_skip, generator, settings.num_frames
        )
        loaded = [video.load_frame(p) for p in positions]
        if loaded[0][1].any():
            break
    sizes = {frame[0].shape for frame in loaded}
    if len(sizes) > 1:
        raise BadInput(SIZE_MISMATCH, video.source_id, f"frames of different sizes {sorted(sizes)}")
    prepared = prepare_frames(
        [frame[0] for frame in loaded], [frame[1] for frame in loaded], settings.size
    )
    frames, labels, params, offsets, attempts = _warp(
        prepared, settings, generator, shared_crop=True
    )
    record = {
        "kind": "video",
        "source": video.source_id,
        "seed": int(seed),
        "size": settings.size,
        "source_size": list(prepared.source_size),
        "source_reduce": prepared.reduce,
        "frame_indices": [int(indices[p]) for p in positions],
        "skip": skip,
        "attempts": attempts + draws - 1,
        "objects": _objects(labels[0]),
        "frames": _frame_records(params, offsets, settings),
    }
    return Clip(frames, labels, record)


# -- video windows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoWindow:
    """A plan item: consecutive annotated frames (`positions` into `video.frame_indices()`)."""

    video: object  # a video source from datagen.sources
    positions: tuple[int, ...]

    @property
    def source_id(self) -> str:
        return f"{self.video.source_id}@{self.positions[0]}-{self.positions[-1]}"


def window_positions(
    indices: list[int], max_skip: int, stride: int | None = None, count: int = 3
) -> list[tuple[int, ...]]:
    """Windows of a video whose annotated frames have raw indices `indices` (sorted).

    A window holds the annotated frames of `2 * max_skip + 1` consecutive raw frames, room for
    a clip of `count` frames with both gaps at `max_skip`; at least `count` frames where
    annotations are sparse. Windows start every `stride` raw frames (default `max_skip`, so
    consecutive windows overlap by half) and the last one ends at the video's last frame.
    A video shorter than a window is one window.
    """
    if len(indices) < count:
        return []
    span, stride = 2 * max_skip + 1, stride or max_skip
    last_start = max(indices[0], indices[-1] - span + 1)
    starts = list(range(indices[0], last_start + 1, stride))
    if starts[-1] != last_start:
        starts.append(last_start)
    windows: list[tuple[int, ...]] = []
    for start in starts:
        low = bisect.bisect_left(indices, start)
        high = max(bisect.bisect_left(indices, start + span), low + count)
        if high > len(indices):
            low, high = len(indices) - count, len(indices)
        window = tuple(range(low, high))
        if not windows or windows[-1] != window:
            windows.append(window)
    return windows


def window_short_side(settings: ClipSettings) -> int:
    """The shorter side of stored window frames: a little above the clip size."""
    return max(settings.size, round(settings.size * (1 + settings.window_margin)))


def _resized(image: np.ndarray, labels: np.ndarray, short_side: int):
    height, width = labels.shape
    scale = short_side / min(height, width)
    size = (max(short_side, round(width * scale)), max(short_side, round(height * scale)))
    if size == (width, height):
        return image, labels
    frame = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    mask = Image.fromarray(labels).resize(size, Image.Resampling.NEAREST)
    return np.asarray(frame), np.asarray(mask)


def _box(labels: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1) of all objects in a frame, None when it shows none."""
    rows, columns = np.flatnonzero(labels.any(1)), np.flatnonzero(labels.any(0))
    if rows.size == 0:
        return None
    return [int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1]


def make_video_window(window: VideoWindow, settings: ClipSettings) -> Clip:
    """The window's frames and masks, resized to `window_short_side(settings)`, as a `Clip`
    (frames uint8 [N, 3, H, W]) whose record lists every frame's raw index, objects and the
    box around its objects (what the reader needs to draw a clip without decoding).

    Raises `SynthesisFailed` when no frame that can start a clip shows an object.
    """
    video = window.video
    indices = video.frame_indices()
    loaded = [video.load_frame(position) for position in window.positions]
    sizes = {frame[0].shape for frame in loaded}
    if len(sizes) > 1:
        raise BadInput(SIZE_MISMATCH, video.source_id, f"frames of different sizes {sorted(sizes)}")
    short_side = window_short_side(settings)
    resized = [_resized(image, labels, short_side) for image, labels in loaded]
    frame_objects = [_objects(labels) for _, labels in resized]
    if not any(frame_objects[: len(resized) - settings.num_frames + 1]):
        raise SynthesisFailed(NO_OBJECT_IN_WINDOW)
    height, width = resized[0][1].shape
    record = {
        "kind": "window",
        "source": video.source_id,
        "frame_indices": [int(indices[position]) for position in window.positions],
        "size": [int(width), int(height)],
        "source_size": [int(loaded[0][0].shape[1]), int(loaded[0][0].shape[0])],
        "objects": sorted({obj for objects in frame_objects for obj in objects}),
        "frame_objects": frame_objects,
        "boxes": [_box(labels) for _, labels in resized],
    }
    frames = np.stack([image.transpose(2, 0, 1) for image, _ in resized])
    return Clip(frames, np.stack([labels for _, labels in resized]), record)


def draw_window_frames(
    indices: list[int],
    max_gap: int,
    rng: random.Random,
    starts_ok: list[bool] | None = None,
    count: int = 3,
) -> list[int]:
    """`count` ordered positions in a window whose frames have raw indices `indices`.

    The clip's largest gap G is drawn uniformly from 1..max_gap raw frames, then each next
    frame uniformly among the frames at most G raw frames after the previous one (so small
    gaps are common, large ones possible, none above max_gap). Where the next annotated frame
    is further than G (sparse annotations, or a gap limit under their spacing) the clip takes
    the next annotated frame. The first frame is one whose `starts_ok` is true (it shows an
    object), when there is one.
    """
    last_start = len(indices) - count
    if last_start < 0:
        raise ValueError(f"need {count} frames, the window has {len(indices)}")
    limit = rng.randint(1, max(1, max_gap))
    starts = [p for p in range(last_start + 1) if starts_ok is None or starts_ok[p]]
    position = rng.choice(starts or list(range(last_start + 1)))
    positions = [position]
    for frames_left in range(count - 1, 0, -1):
        furthest = len(indices) - frames_left  # leave room for the frames still to come
        reachable = bisect.bisect_right(indices, indices[position] + limit) - 1
        position = rng.randint(position + 1, max(position + 1, min(reachable, furthest)))
        positions.append(position)
    return positions
