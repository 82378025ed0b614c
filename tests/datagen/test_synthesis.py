"""Clip synthesis: determinism, alignment of masks with frames, recorded geometry, TPS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datagen import procedural
from datagen.sources import scan_davis, scan_youtube
from datagen.synthesis import (
    ClipSettings,
    FrameParams,
    SynthesisFailed,
    add_background_regions,
    prepare_image,
    sampling_grids,
    synthesize_image_clip,
    synthesize_video_clip,
)


def _objectness(frames: np.ndarray) -> np.ndarray:
    """Saturated pixels: procedural objects are saturated, backgrounds and padding are not."""
    rgb = frames.astype(np.float32)  # [T, 3, H, W]
    high, low = rgb.max(1), rgb.min(1)
    return (high - low) / np.maximum(high, 1) > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _pixel_grid(params: FrameParams, source_hw, settings) -> np.ndarray:
    """The sampling grid in source pixels (x, y), [B, S, S, 2]."""
    grid = sampling_grids(params, source_hw, settings).double().numpy()
    height, width = source_hw
    return (grid + 1) / 2 * np.array([width, height])


def _affine_fit(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine map output pixel -> source pixel; (2x2 linear part, max residual)."""
    size = pixels.shape[0]
    ys, xs = np.mgrid[0:size, 0:size]
    design = np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)], 1)
    target = pixels.reshape(-1, 2)
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = np.abs(design @ coefficients - target).max()
    return coefficients[:2].T, float(residual)


def test_same_seed_gives_the_same_clip():
    image, labels = procedural.render_image(1, (160, 120))
    settings = ClipSettings(size=64)
    prepared = prepare_image(image, labels, settings.size)
    first = synthesize_image_clip(prepared, settings, seed=11, source_id="a")
    again = synthesize_image_clip(
        prepare_image(image, labels, settings.size), settings, seed=11, source_id="a"
    )
    other = synthesize_image_clip(prepared, settings, seed=12, source_id="a")
    assert np.array_equal(first.frames, again.frames) and np.array_equal(first.labels, again.labels)
    assert first.record == again.record
    assert not np.array_equal(first.frames, other.frames)
    assert first.frames.shape == (3, 3, 64, 64) and first.labels.shape == (3, 64, 64)
    assert not np.array_equal(first.frames[0], first.frames[1])  # three different views


@pytest.mark.parametrize("seed", range(6))
def test_masks_stay_aligned_with_frames_after_the_warps(seed):
    image, labels = procedural.render_image(seed, (200, 150))
    settings = ClipSettings(size=96)
    clip = synthesize_image_clip(prepare_image(image, labels, settings.size), settings, seed=seed)
    objects = _objectness(clip.frames)
    for t in range(3):
        assert _iou(objects[t], clip.labels[t] > 0) > 0.97, f"frame {t}"
    # the same check fails for a mask two pixels off, so it does test alignment
    shifted = np.roll(clip.labels[0] > 0, 2, axis=1)
    assert _iou(objects[0], shifted) < 0.97


def test_video_masks_stay_aligned(davis_folder):
    video = scan_davis(str(davis_folder)).sources[1]
    settings = ClipSettings(
        size=64, rotation=(-10, 10), scale=(0.9, 1.1), tps_strength=0.0, max_skip=3
    )
    clip = synthesize_video_clip(video, settings, seed=5)
    objects = _objectness(clip.frames)
    for t in range(3):
        if clip.labels[t].any():
            assert _iou(objects[t], clip.labels[t] > 0) > 0.85, f"frame {t}"


def test_recorded_rotation_and_scale_stay_in_their_ranges():
    image, labels = procedural.render_image(2, (160, 120))
    settings = ClipSettings(size=64)
    prepared = prepare_image(image, labels, settings.size)
    rotations, scales = [], []
    for seed in range(25):
        record = synthesize_image_clip(prepared, settings, seed).record
        rotations += [frame["rotation"] for frame in record["frames"]]
        scales += [frame["scale"] for frame in record["frames"]]
        assert record["seed"] == seed and len(record["frames"]) == 3
    assert -30 <= min(rotations) < -20 and 20 < max(rotations) <= 30
    assert 0.75 <= min(scales) < 0.85 and 1.15 < max(scales) <= 1.25


@pytest.mark.parametrize(("rotation", "scale"), [(20.0, 0.8), (-30.0, 1.25), (7.5, 1.0)])
def test_rotation_and_scale_mean_what_the_record_says(rotation, scale):
    """With the spline off, the grid is exactly the recorded rotation and zoom."""
    settings = ClipSettings(size=64, tps_strength=0.0)
    params = FrameParams(
        torch.tensor([rotation], dtype=torch.float64),
        torch.tensor([scale], dtype=torch.float64),
        torch.tensor([[0.5, 0.5]], dtype=torch.float64),
        torch.zeros(1, 16, 2, dtype=torch.float64),
    )
    source_hw = (480, 854)  # short side 480 >= 64: no base resize
    linear, residual = _affine_fit(_pixel_grid(params, source_hw, settings)[0])
    assert residual < 1e-3
    # source pixels per output pixel: R(-theta) / scale
    assert np.linalg.det(linear) == pytest.approx(1 / scale**2, rel=1e-4)
    angle = math.degrees(math.atan2(linear[1, 0], linear[0, 0]))
    assert abs(abs(angle) - abs(rotation)) < 0.01


def test_thin_plate_spline_warp_is_not_affine():
    torch_generator = torch.Generator().manual_seed(0)
    offsets = (torch.rand(2, 16, 2, generator=torch_generator, dtype=torch.float64) - 0.5) * 0.16
    params = FrameParams(
        torch.tensor([10.0, 10.0], dtype=torch.float64),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.full((2, 2), 0.5, dtype=torch.float64),
        offsets,
    )
    warped = _pixel_grid(params, (120, 160), ClipSettings(size=64, tps_strength=0.08))
    straight = _pixel_grid(params, (120, 160), ClipSettings(size=64, tps_strength=0.0))
    for frame in range(2):
        assert _affine_fit(warped[frame])[1] > 1.0  # pixels away from the best affine map
        assert _affine_fit(straight[frame])[1] < 1e-3


def test_a_lost_object_makes_the_clip_fail_and_kept_clips_show_it():
    image, labels = procedural.render_image(4, (160, 120))
    settings = ClipSettings(size=64, min_object_area=0.05)
    prepared = prepare_image(image, labels, settings.size)
    for seed in range(5):
        clip = synthesize_image_clip(prepared, settings, seed)
        areas = (clip.labels > 0).reshape(3, -1).mean(1)
        assert (areas >= 0.05 * 0.9).all()  # checked on a 64 px copy: allow rounding
    speck = np.zeros_like(labels)
    speck[60, 80] = 1
    with pytest.raises(SynthesisFailed):
        synthesize_image_clip(
            prepare_image(image, speck, 64), ClipSettings(size=64, max_attempts=4), seed=0
        )


def test_video_clips_are_ordered_with_gaps_up_to_max_skip(youtube_folder):
    video = scan_youtube(str(youtube_folder)).sources[0]
    ordinals = {index: position for position, index in enumerate(video.frame_indices())}
    settings = ClipSettings(
        size=48, tps_strength=0.0, rotation=(-10, 10), scale=(0.9, 1.1), max_skip=3
    )
    skips = set()
    for seed in range(20):
        clip = synthesize_video_clip(video, settings, seed)
        indices = clip.record["frame_indices"]
        positions = [ordinals[i] for i in indices]
        gaps = np.diff(positions)
        assert (gaps >= 1).all() and gaps.max() <= 3
        assert clip.record["skip"] == gaps.max()
        assert clip.labels[0].any()  # frame 0 shows an object
        skips.add(clip.record["skip"])
    assert skips == {1, 2, 3}


def _one_rectangle(height: int = 120, width: int = 160) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    labels[40:60, 50:80] = 1  # a 20 x 30 object
    return labels


def test_background_regions_are_moved_object_masks_on_background_only():
    labels = _one_rectangle()
    regions = add_background_regions(labels, 2, seed=7)
    assert np.array_equal(regions[labels > 0], labels[labels > 0])  # objects are kept
    assert sorted(np.unique(regions).tolist()) == [0, 1, 2, 3]
    for region_id in (2, 3):
        ys, xs = np.nonzero(regions == region_id)
        assert (labels[ys, xs] == 0).all()  # only background
        assert ys.max() - ys.min() < 20 and xs.max() - xs.min() < 30  # inside a moved copy
        assert len(ys) >= 0.5 * 20 * 30
    assert np.array_equal(add_background_regions(labels, 2, seed=7), regions)
    assert not np.array_equal(add_background_regions(labels, 2, seed=8), regions)
    assert add_background_regions(labels, 0, seed=7) is labels
    empty = np.zeros_like(labels)
    assert add_background_regions(empty, 2, seed=7) is empty  # nothing to move


def test_image_clips_carry_their_background_regions_warped_with_the_image():
    """A region is one more object of the clip, warped like the pixels under it."""
    labels = add_background_regions(_one_rectangle(), 1, seed=3)
    image = np.full((*labels.shape, 3), 128, np.uint8)
    image[labels == 2] = (0, 0, 255)  # the background the region covers, painted blue
    settings = ClipSettings(size=64)
    clip = synthesize_image_clip(prepare_image(image, labels, 64), settings, seed=5)
    assert clip.record["objects"] == [1, 2]
    blue = (clip.frames[:, 2] > 200) & (clip.frames[:, 0] < 60)
    for t in range(3):
        assert _iou(blue[t], clip.labels[t] == 2) > 0.9, f"frame {t}"


@pytest.mark.parametrize(("height", "width", "side"), [(480, 640, 100), (240, 427, 50)])
def test_fit_source_scales_every_source_to_the_clip_size(height, width, side):
    """With fit_source a crop shows the whole height of the source (an object of side s in
    a source of shorter side H appears s * size / H px wide); without, a large source is cut."""
    labels = np.zeros((height, width), np.uint8)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    labels[top : top + side, left : left + side] = 1
    image = np.zeros((height, width, 3), np.uint8)
    straight = dict(size=96, rotation=(0.0, 0.0), scale=(1.0, 1.0), tps_strength=0.0)
    fitted = ClipSettings(**straight, fit_source=True)
    clip = synthesize_image_clip(prepare_image(image, labels, 96, fit=True), fitted, seed=1)
    expected_side = side * 96 / height
    for t in range(3):
        assert (clip.labels[t] > 0).sum() == pytest.approx(expected_side**2, rel=0.15)
    cut = synthesize_image_clip(prepare_image(image, labels, 96), ClipSettings(**straight), seed=1)
    assert (cut.labels[0] > 0).sum() > 2 * expected_side**2
