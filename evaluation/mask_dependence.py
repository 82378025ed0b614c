"""Does a model follow the object it is given? Two checks that no mask-blind model passes.

`follows_given_object(net)`: held-out procedural videos with two look-alike objects (the same
shape family and texture, colours a little apart, both equally salient). Each video is
segmented twice, once from object A's first-frame mask and once from B's. A model that uses
its mask segments A in the first run and B in the second: J of at least `min_j` on each,
and two runs that differ (their IoU below `max_overlap`). A model that segments whatever is
salient gives the same prediction in both runs, so it cannot pass, whatever its J on one.

`moves_with_mask(net, videos)`: the first mask moved sideways by a third of the frame must
move the prediction on the next frames (the IoU between the two runs' masks stays below
`max_overlap`). A mask-blind model predicts the same thing from either mask (an IoU near 1).
`prediction_moves_with_mask(net, davis_root)` runs it on the sequences of a DAVIS folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.masks import list_frames, read_frame, read_mask
from datagen.procedural import render_video
from models import VideoSegmenter


@dataclass(frozen=True)
class ObjectFollowing:
    J_A: float  # mean J of the A-run against object A, frames 1..T-1
    J_B: float
    overlap: float  # mean IoU between the A-run's and the B-run's predictions
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def segment(net, frames, first_mask: np.ndarray, internal_size="original") -> list[np.ndarray]:
    """Foreground (label 1) of every frame after the first, from one object's first mask."""
    segmenter = VideoSegmenter(net, device="cpu", internal_size=internal_size)
    with torch.inference_mode():
        segmenter.step(frames[0], labels=first_mask.astype(np.uint8))
        return [np.asarray(segmenter.step(frame).labels) == 1 for frame in frames[1:]]


def lookalike_videos(count: int, frames: int, size: tuple[int, int], seed: int) -> list:
    """(frames, labels) of `count` two-object look-alike videos, a pure function of `seed`.

    Each object keeps to its own lane of the frame, so only the mask says which one is meant
    (tests/learning/test_follows_given_mask.py trains on such scenes).
    """
    return [
        render_video(seed + index, frames, size, 2, style="lookalike_lanes")
        for index in range(count)
    ]


def follows_given_object(
    net,
    videos: int = 6,
    frames: int = 8,
    size: tuple[int, int] = (64, 48),
    seed: int = 100_000,
    min_j: float = 0.8,
    max_overlap: float = 0.3,
) -> dict:
    """The look-alike check of the module docstring; seeds far from any training seed."""
    j_a, j_b, overlap = [], [], []
    for video, labels in lookalike_videos(videos, frames, size, seed):
        runs = {}
        for object_id, scores in ((1, j_a), (2, j_b)):
            runs[object_id] = segment(net, video, labels[0] == object_id)
            truth = labels[1:] == object_id
            scores += [iou(p, t) for p, t in zip(runs[object_id], truth, strict=True)]
        overlap += [iou(a, b) for a, b in zip(runs[1], runs[2], strict=True)]
    mean_a, mean_b, mean_overlap = float(np.mean(j_a)), float(np.mean(j_b)), float(np.mean(overlap))
    passed = mean_a >= min_j and mean_b >= min_j and mean_overlap < max_overlap
    return ObjectFollowing(mean_a, mean_b, mean_overlap, bool(passed)).as_dict()


def moves_with_mask(net, videos: Iterable, internal_size="train", max_overlap: float = 0.5) -> dict:
    """The mask-shift check of the module docstring on (frames, first_mask bool [H, W]) pairs.

    Each video is segmented from its first mask and from that mask rolled sideways by a third
    of the width; "iou" is the mean IoU of the two runs' masks over frames 1.. of every video,
    "moved" whether it is below `max_overlap`.
    """
    overlaps = []
    for frames, first in videos:
        shifted = np.roll(first, first.shape[1] // 3, axis=1)
        original_run = segment(net, frames, first, internal_size)
        shifted_run = segment(net, frames, shifted, internal_size)
        overlaps += [iou(a, b) for a, b in zip(original_run, shifted_run, strict=True)]
    overlap = float(np.mean(overlaps))
    return {"iou": overlap, "moved": overlap < max_overlap}


def prediction_moves_with_mask(
    net, davis_root: str | Path, frames: int = 10, max_overlap: float = 0.5
) -> dict:
    """`moves_with_mask` on the first `frames` + 1 frames of every sequence of a DAVIS folder
    (480p, all objects as one mask), at the model's own size."""
    return moves_with_mask(net, davis_videos(davis_root, frames), "train", max_overlap)


def davis_videos(davis_root: str | Path, frames: int) -> Iterator[tuple[list, np.ndarray]]:
    """(the first `frames` + 1 frames, first mask of all objects) of each 480p sequence."""
    for sequence in sorted((Path(davis_root) / "Annotations" / "480p").iterdir()):
        paths = list_frames(Path(davis_root) / "JPEGImages" / "480p" / sequence.name)[: frames + 1]
        first = read_mask(sequence / f"{paths[0].stem}.png") > 0
        yield [read_frame(path) for path in paths], first
