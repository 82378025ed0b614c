"""Real frames: the shared DAVIS 2016 sample (854 x 480, 0/255 masks); skipped when absent."""

from __future__ import annotations

import numpy as np

from datagen.reader import ClipStream
from datagen.sources import scan_davis, scan_image_folders
from datagen.synthesis import (
    VIDEO_SETTINGS,
    ClipSettings,
    prepare_image,
    synthesize_image_clip,
    synthesize_video_clip,
)
from tests.datagen.conftest import build_set

MAGENTA = np.array([255, 0, 255], np.uint8)


def _painted(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The real frame with its object painted magenta, so the object is visible in the pixels."""
    out = image.copy()
    out[labels > 0] = MAGENTA
    return out


def _magenta(frames: np.ndarray) -> np.ndarray:
    red, green, blue = (frames[:, c].astype(int) for c in range(3))
    return (red > 180) & (blue > 180) & (green < 90)


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


class _PaintedVideo:
    def __init__(self, video):
        self.video, self.source_id = video, video.source_id

    def frame_indices(self):
        return self.video.frame_indices()

    def load_frame(self, position):
        image, labels = self.video.load_frame(position)
        return _painted(image, labels), labels


def test_the_sample_is_read_in_the_davis_layout(davis_root):
    scan = scan_davis(str(davis_root))
    assert {s.source_id: len(s.frames) for s in scan.sources} == {
        "blackswan": 50,
        "car-shadow": 40,
        "drift-chicane": 52,
        "motocross-jump": 40,
    }
    assert not scan.skipped
    image, labels = scan.sources[0].load_frame(0)
    assert image.shape == (480, 854, 3) and set(np.unique(labels)) == {0, 1}


def test_masks_stay_aligned_on_real_frames(davis_root):
    pairs = scan_image_folders(
        str(davis_root), "JPEGImages/480p/car-shadow", "Annotations/480p/car-shadow"
    )
    assert len(pairs.sources) == 40 and not pairs.skipped
    settings = ClipSettings(size=128)
    for seed, source in enumerate(pairs.sources[::13]):
        image, labels = source.load()
        clip = synthesize_image_clip(
            prepare_image(_painted(image, labels), labels, settings.size), settings, seed
        )
        for t in range(3):
            assert _iou(_magenta(clip.frames)[t], clip.labels[t] > 0) > 0.95

    video = _PaintedVideo(scan_davis(str(davis_root), sequences=["blackswan"]).sources[0])
    video_settings = ClipSettings(
        size=128,
        rotation=VIDEO_SETTINGS.rotation,
        scale=VIDEO_SETTINGS.scale,
        tps_strength=0.0,
        max_skip=10,
    )
    for seed in range(3):
        clip = synthesize_video_clip(video, video_settings, seed)
        indices = clip.record["frame_indices"]
        assert indices == sorted(indices) and max(np.diff(indices)) <= 10
        for t in range(3):
            assert _iou(_magenta(clip.frames)[t], clip.labels[t] > 0) > 0.95


def test_real_clips_through_shards_and_the_reader(davis_root, tmp_path):
    scan = scan_davis(str(davis_root), sequences=["blackswan", "motocross-jump"])
    settings = ClipSettings(
        size=96, rotation=(-10, 10), scale=(0.9, 1.1), tps_strength=0.0, max_skip=5
    )
    manifest = build_set(
        str(tmp_path), scan.sources, settings, kind="video", clips_per_source=2, clips_per_shard=2
    )
    assert manifest["total_samples"] == 4 and not manifest["skipped"]
    samples = list(ClipStream(str(tmp_path)).dataset(0))
    assert len(samples) == 4
    for sample in samples:
        assert sample["frames"].shape == (3, 3, 96, 96) and sample["frames"].std() > 0.05
        assert sample["num_objects"] == 1 and (sample["labels"][0] == 1).any()
