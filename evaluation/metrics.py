"""DAVIS metrics for semi-supervised video object segmentation: J, F, recall, decay.

The definitions are those of the DAVIS benchmark (Perazzi et al., CVPR 2016; Pont-Tuset et
al., 2017) as implemented by the official `davis2017-evaluation` package, computed with numpy
and scipy only.

Region similarity (Jaccard index) of a predicted mask M and a ground-truth mask G:

    J = |M ∩ G| / |M ∪ G|            (J = 1 when both are empty)

Boundary F-measure: with c(M) the one-pixel boundary map of M and a tolerance of
r = ceil(0.008 * ||(H, W)||) pixels (8 px at 854x480), a boundary pixel matches when a boundary
pixel of the other mask lies in the disk of radius r around it:

    P = |{p ∈ c(M) : d(p, c(G)) <= r}| / |c(M)|      R = |{g ∈ c(G) : d(g, c(M)) <= r}| / |c(G)|
    F = 2 P R / (P + R)

The official code dilates each boundary map with the disk `x² + y² <= r²` and counts the
overlaps; asking for a boundary pixel of the other mask within squared distance r² is the same
test, answered here with a k-d tree over the boundary pixels (a few thousand points) rather
than a dilation of the whole image.

Per object and sequence: the first frame (given) and the last are not scored; the mean of the
per-frame values, the recall (fraction of frames with a value above 0.5) and the decay (mean
of the first quarter of the frames minus the mean of the last quarter) are reported. Objects
are scored one by one; J and F of a set are the means over its objects, and J&F is the mean
of the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "BOUNDARY_TOLERANCE",
    "FrameError",
    "ObjectScore",
    "SequenceScore",
    "SequenceScorer",
    "boundary_f_measure",
    "boundary_map",
    "region_similarity",
    "score_sequence",
    "statistics",
    "summarize",
]

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal (DAVIS `bound_th`)


class FrameError(ValueError):
    """Masks of a sequence that cannot be scored together (count or size mismatch)."""


def region_similarity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """J: intersection over union of two binary masks; 1.0 when both are empty."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    union = np.count_nonzero(prediction | truth)
    if union == 0:
        return 1.0
    return np.count_nonzero(prediction & truth) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask (DAVIS `_seg2bmap` at the mask's own size).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour;
    the boundaries sit half a pixel towards the origin from the true contour.
    """
    seg = mask.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance_pixels(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """The match radius in pixels: `tolerance` itself when >= 1, else ceil(tolerance * diagonal)."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(*shape)))


def _matched(points: np.ndarray, others: np.ndarray, radius: int) -> int:
    """How many of `points` have a point of `others` within Euclidean distance `radius`."""
    distances, _ = cKDTree(others).query(points, k=1)
    # squared distances between pixel centres are integers: compare them exactly
    return int(np.count_nonzero(np.rint(distances**2) <= radius * radius))


def boundary_f_measure(
    prediction: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE
) -> float:
    """F: boundary precision/recall F-measure of two binary masks (DAVIS `f_measure`)."""
    if prediction.shape != truth.shape:
        raise FrameError(f"mask sizes differ: {prediction.shape} vs {truth.shape}")
    radius = boundary_tolerance_pixels(prediction.shape, tolerance)
    predicted_points = np.argwhere(boundary_map(prediction))
    true_points = np.argwhere(boundary_map(truth))
    n_predicted, n_true = len(predicted_points), len(true_points)

    if n_predicted == 0 and n_true == 0:
        precision, recall = 1.0, 1.0
    elif n_predicted == 0:
        precision, recall = 1.0, 0.0
    elif n_true == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = _matched(predicted_points, true_points, radius) / n_predicted
        recall = _matched(true_points, predicted_points, radius) / n_true

    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(per_frame: Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as DAVIS's `db_statistics`.

    recall = fraction of frames scoring above 0.5; decay = mean of the first of four
    (overlapping) bins of frames minus the mean of the last bin, with the bin edges
    round(linspace(1, n, 5)) - 1 of the official code.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    first_bin = values[edges[0] : edges[1] + 1]
    last_bin = values[edges[3] : edges[4] + 1]
    decay = float(np.nanmean(first_bin) - np.nanmean(last_bin))
    return mean, recall, decay


@dataclass(frozen=True)
class ObjectScore:
    """One object of one sequence: per-frame J and F over the scored frames, and their stats."""

    sequence: str
    object_id: int
    frames: tuple[str, ...]
    j_per_frame: tuple[float, ...]
    f_per_frame: tuple[float, ...]

    @property
    def j(self) -> tuple[float, float, float]:
        """(mean, recall, decay) of J."""
        return statistics(self.j_per_frame)

    @property
    def f(self) -> tuple[float, float, float]:
        """(mean, recall, decay) of F."""
        return statistics(self.f_per_frame)


@dataclass(frozen=True)
class SequenceScore:
    """All objects of one sequence; J and F are the means over the objects."""

    name: str
    objects: tuple[ObjectScore, ...]

    @property
    def j_stats(self) -> tuple[float, float, float]:
        """(mean, recall, decay) of J, each averaged over the objects."""
        return tuple(float(value) for value in np.mean([obj.j for obj in self.objects], axis=0))

    @property
    def f_stats(self) -> tuple[float, float, float]:
        """(mean, recall, decay) of F, each averaged over the objects."""
        return tuple(float(value) for value in np.mean([obj.f for obj in self.objects], axis=0))

    @property
    def j_mean(self) -> float:
        return self.j_stats[0]

    @property
    def f_mean(self) -> float:
        return self.f_stats[0]

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    def worst_frames(self, count: int) -> list[tuple[str, int, float]]:
        """The `count` (frame, object, J) with the lowest J in this sequence."""
        scored = [
            (frame, obj.object_id, j)
            for obj in self.objects
            for frame, j in zip(obj.frames, obj.j_per_frame, strict=True)
        ]
        return sorted(scored, key=lambda item: item[2])[:count]


def check_sizes(where: str, truth: np.ndarray, prediction: np.ndarray) -> None:
    if truth.shape != prediction.shape:
        raise FrameError(
            f"{where}: prediction is {prediction.shape[1]}x{prediction.shape[0]}, "
            f"ground truth is {truth.shape[1]}x{truth.shape[0]}"
        )


class SequenceScorer:
    """Scores a sequence frame by frame, holding no masks: `add` every frame in order, then
    `score`. The objects are 1..K with K the largest id of the first ground-truth frame (as
    DAVIS does); the first frame (given) and the last are not scored."""

    def __init__(self, name: str, num_frames: int, first_truth: np.ndarray):
        if num_frames < 3:
            raise FrameError(
                f"{name}: {num_frames} frames; at least 3 are needed (first and last are not scored)"
            )
        self.name, self.num_frames = name, num_frames
        self.object_ids = range(1, int(np.max(first_truth)) + 1)
        self.frames: list[str] = []
        self.j_values: dict[int, list[float]] = {object_id: [] for object_id in self.object_ids}
        self.f_values: dict[int, list[float]] = {object_id: [] for object_id in self.object_ids}
        self.added = 0

    def add(self, frame: str, truth: np.ndarray, prediction: np.ndarray) -> None:
        check_sizes(f"{self.name}/{frame}", truth, prediction)
        if int(prediction.max(initial=0)) > len(self.object_ids):  # the official code refuses too
            raise FrameError(
                f"{self.name}/{frame}: predicted object id {int(prediction.max())} but the "
                f"sequence has {len(self.object_ids)} object(s)"
            )
        index, self.added = self.added, self.added + 1
        if index == 0 or index == self.num_frames - 1:
            return
        self.frames.append(frame)
        for object_id in self.object_ids:
            true_mask, predicted_mask = truth == object_id, prediction == object_id
            self.j_values[object_id].append(region_similarity(predicted_mask, true_mask))
            self.f_values[object_id].append(boundary_f_measure(predicted_mask, true_mask))

    def score(self) -> SequenceScore:
        if self.added != self.num_frames:
            raise FrameError(f"{self.name}: {self.added} frames scored of {self.num_frames}")
        objects = tuple(
            ObjectScore(
                self.name,
                object_id,
                tuple(self.frames),
                tuple(self.j_values[object_id]),
                tuple(self.f_values[object_id]),
            )
            for object_id in self.object_ids
        )
        return SequenceScore(self.name, objects)


def score_sequence(
    name: str,
    truth: Sequence[np.ndarray],
    prediction: Sequence[np.ndarray],
    frame_names: Sequence[str] | None = None,
) -> SequenceScore:
    """Score a whole sequence of label maps (0 = background, 1..K = objects).

    `truth` and `prediction` hold every frame, the given first frame and the last included;
    see `SequenceScorer` for the protocol.
    """
    if len(truth) != len(prediction):
        raise FrameError(
            f"{name}: {len(prediction)} predicted frames for {len(truth)} ground-truth frames"
        )
    frame_names = list(frame_names or [f"{index:05d}" for index in range(len(truth))])
    for frame, true_labels, predicted_labels in zip(frame_names, truth, prediction, strict=True):
        check_sizes(f"{name}/{frame}", true_labels, predicted_labels)  # all before any work
    scorer = SequenceScorer(name, len(truth), truth[0])
    for frame, true_labels, predicted_labels in zip(frame_names, truth, prediction, strict=True):
        scorer.add(frame, true_labels, predicted_labels)
    return scorer.score()


def summarize(sequences: Sequence[SequenceScore]) -> dict:
    """The figures of a set of sequences, as plain data (JSON-ready).

    Means, recalls and decays are taken over all objects of all sequences (the official
    averaging), not over sequences; a sequence's own J and F are over its objects.
    """
    objects = [obj for sequence in sequences for obj in sequence.objects]
    if not objects:
        raise FrameError("no objects to score")
    j_stats = np.array([obj.j for obj in objects])
    f_stats = np.array([obj.f for obj in objects])
    j_mean, j_recall, j_decay = (float(value) for value in np.nanmean(j_stats, axis=0))
    f_mean, f_recall, f_decay = (float(value) for value in np.nanmean(f_stats, axis=0))
    return {
        "J_mean": j_mean,
        "F_mean": f_mean,
        "JF_mean": (j_mean + f_mean) / 2,
        "J_recall": j_recall,
        "J_decay": j_decay,
        "F_recall": f_recall,
        "F_decay": f_decay,
        "sequences": {
            sequence.name: {"J": sequence.j_mean, "F": sequence.f_mean} for sequence in sequences
        },
    }
