"""DAVIS metrics: hand-made masks with known answers, and agreement with the official code
(transcribed in `davis_reference.py`) on real DAVIS sequences with perturbed ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from core.masks import read_mask
from evaluation.metrics import (
    FrameError,
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_pixels,
    region_similarity,
    score_sequence,
    statistics,
    summarize,
)
from tests.evaluation.davis_reference import (
    official_db_statistics,
    official_f_measure,
    official_scores,
    official_seg2bmap,
)

# ---------------------------------------------------------------------------------------------
# Hand-made masks with known answers.


def square(size=100, top=30, left=30, side=40) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.mark.parametrize("shift", [0, 1, 5, 10, 40])
def test_j_of_a_square_shifted_by_k_pixels(shift):
    truth, prediction = square(), square(left=30 + shift)
    side = 40
    overlap = side * max(side - shift, 0)
    expected = overlap / (2 * side * side - overlap)
    assert region_similarity(prediction, truth) == pytest.approx(expected)


def test_j_of_empty_masks():
    empty = np.zeros((20, 30), dtype=bool)
    assert region_similarity(empty, empty) == 1.0
    three_columns = np.zeros((20, 30), dtype=bool)
    three_columns[:, :3] = True
    assert region_similarity(empty, three_columns) == 0.0
    assert region_similarity(three_columns, empty) == 0.0


def test_boundary_tolerance_is_ceil_of_diagonal_fraction():
    assert boundary_tolerance_pixels((480, 854)) == 8  # 0.008 * 979.6 = 7.84
    assert boundary_tolerance_pixels((100, 100)) == 2  # 0.008 * 141.4 = 1.13
    assert boundary_tolerance_pixels((100, 100), tolerance=5) == 5


def test_boundary_map_of_a_square():
    boundary = boundary_map(square())
    # a 40x40 square's boundary sits half a pixel towards the origin: two 41-pixel rows
    # (rows 29 and 69) and two columns, each pixel counted once
    assert boundary.sum() == 4 * 40
    assert boundary[29, 30:70].all() and boundary[69, 30:70].all()
    assert boundary[30:69, 29].all() and boundary[30:69, 69].all()
    np.testing.assert_array_equal(boundary, official_seg2bmap(square()))


def vertical_edge(column: int, shape=(120, 160)) -> np.ndarray:
    """Everything left of `column`: one straight boundary, the column just left of the edge."""
    mask = np.zeros(shape, dtype=bool)
    mask[:, :column] = True
    return mask


@pytest.mark.parametrize("tolerance_px", [1, 2, 3])
def test_f_at_the_edge_of_the_boundary_tolerance(tolerance_px):
    """An edge moved by exactly the tolerance matches everywhere; one pixel more, nowhere."""
    truth = vertical_edge(80)
    assert boundary_map(truth).sum() == 120 and boundary_map(truth)[:, 79].all()
    assert (
        boundary_f_measure(vertical_edge(80 + tolerance_px), truth, tolerance=tolerance_px) == 1.0
    )
    assert (
        boundary_f_measure(vertical_edge(80 - tolerance_px), truth, tolerance=tolerance_px) == 1.0
    )
    assert (
        boundary_f_measure(vertical_edge(81 + tolerance_px), truth, tolerance=tolerance_px) == 0.0
    )


def test_f_default_tolerance_on_a_davis_sized_frame():
    """At 854x480 the tolerance is 8 px: an 8 px shift is free, a 9 px shift is not."""
    truth = vertical_edge(400, shape=(480, 854))
    assert boundary_f_measure(vertical_edge(408, shape=(480, 854)), truth) == 1.0
    assert boundary_f_measure(vertical_edge(409, shape=(480, 854)), truth) == 0.0


def test_f_of_a_diagonal_shift_uses_a_disk_not_a_square():
    """Shifted by (2, 2): distance sqrt(8) > 2 px, so a 2 px tolerance leaves corners unmatched."""
    truth = square(200, 60, 60, 80)
    shifted = square(200, 62, 62, 80)
    assert boundary_f_measure(shifted, truth, tolerance=2) < 1.0
    assert boundary_f_measure(shifted, truth, tolerance=3) == pytest.approx(1.0)
    assert boundary_f_measure(shifted, truth, tolerance=2) == pytest.approx(
        official_f_measure(shifted, truth, bound_th=2)
    )


def test_f_of_empty_masks():
    empty = np.zeros((50, 50), dtype=bool)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(empty, square(50, 10, 10, 10)) == 0.0
    assert boundary_f_measure(square(50, 10, 10, 10), empty) == 0.0


def test_statistics_recall_and_decay():
    values = np.array([1.0] * 4 + [0.4] * 4)  # falls after the first half
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(0.7)
    assert recall == pytest.approx(0.5)
    # bins (edges 0, 2, 4, 5, 7): first = frames 0..2 (1.0), last = frames 5..7 (0.4)
    assert decay == pytest.approx(0.6)
    np.testing.assert_allclose((mean, recall, decay), official_db_statistics(values))


def test_first_and_last_frames_are_not_scored():
    truth = [square()] * 5
    wrong = np.zeros((100, 100), dtype=bool)
    prediction = [wrong, square(), square(), square(), wrong]
    score = score_sequence(
        "s", [t.astype(np.uint8) for t in truth], [p.astype(np.uint8) for p in prediction]
    )
    assert score.j_mean == 1.0 and score.f_mean == 1.0
    assert score.objects[0].frames == ("00001", "00002", "00003")


def test_objects_are_scored_one_by_one_and_averaged():
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:40, 10:40] = 1
    truth[60:90, 60:90] = 2
    prediction = truth.copy()
    prediction[prediction == 2] = 0  # object 2 lost entirely, object 1 perfect
    score = score_sequence("two", [truth] * 4, [truth, prediction, prediction, truth])
    assert [obj.j[0] for obj in score.objects] == [1.0, 0.0]
    assert score.j_mean == 0.5
    summary = summarize([score])
    assert summary["J_mean"] == 0.5 and summary["F_mean"] == 0.5 and summary["JF_mean"] == 0.5
    assert summary["sequences"] == {"two": {"J": 0.5, "F": 0.5}}


def test_an_object_id_beyond_the_ground_truth_is_refused():
    truth = [np.ones((10, 12), np.uint8)] * 3
    with pytest.raises(FrameError, match="s/00001: predicted object id 2 but the sequence has 1"):
        score_sequence("s", truth, [truth[0], truth[0] * 2, truth[0]])


def test_mismatched_frames_are_named():
    truth = [np.zeros((10, 12), np.uint8)] * 3
    with pytest.raises(FrameError, match="2 predicted frames for 3"):
        score_sequence("seq", truth, truth[:2])
    with pytest.raises(FrameError, match=r"seq/b: prediction is 10x12, ground truth is 12x10"):
        score_sequence(
            "seq", truth, [truth[0], np.zeros((12, 10), np.uint8), truth[0]], ["a", "b", "c"]
        )


# ---------------------------------------------------------------------------------------------
# Real DAVIS sequences with perturbed ground truth, against the official code.


def perturb(labels: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    """Shift, erode/dilate, speckle or drop the mask, depending on the frame."""
    kind = index % 5
    if kind == 0:
        return np.roll(
            labels, shift=(int(rng.integers(-12, 13)), int(rng.integers(-12, 13))), axis=(0, 1)
        )
    if kind == 1:
        return ndimage.binary_erosion(labels > 0, iterations=int(rng.integers(1, 9))).astype(
            np.uint8
        ) * labels.max(initial=1)
    if kind == 2:
        grown = ndimage.grey_dilation(labels, size=int(rng.integers(3, 15)))
        return grown
    if kind == 3:
        noisy = labels.copy()
        flip = rng.random(labels.shape) < 0.02
        noisy[flip] = np.where(noisy[flip] > 0, 0, 1)
        return noisy
    return np.zeros_like(labels) if index % 10 == 4 else labels


def split_objects(labels: np.ndarray) -> np.ndarray:
    """Two objects from one: the left half of the mask becomes object 2."""
    split = labels.copy()
    columns = np.nonzero(labels.any(axis=0))[0]
    if len(columns):
        middle = (columns[0] + columns[-1]) // 2
        split[:, :middle][split[:, :middle] > 0] = 2
    return split


def sequence_masks(davis_root: Path, name: str) -> list[np.ndarray]:
    return [
        read_mask(path)
        for path in sorted((davis_root / "Annotations" / "480p" / name).glob("*.png"))
    ]


@pytest.mark.parametrize("two_objects", [False, True])
def test_agrees_with_official_evaluation_on_davis_sample(davis_root, two_objects):
    rng = np.random.default_rng(7)
    sequences = sorted(path.name for path in (davis_root / "Annotations" / "480p").iterdir())
    assert sequences, "the DAVIS sample has no sequences"
    for name in sequences:
        truth = sequence_masks(davis_root, name)
        if two_objects:
            truth = [split_objects(labels) for labels in truth[:12]]
        prediction = [perturb(labels, index, rng) for index, labels in enumerate(truth)]

        ours = score_sequence(name, truth, prediction)
        reference = official_scores(truth, prediction)
        assert len(ours.objects) == len(reference) == (2 if two_objects else 1)
        for obj, (j_stats, f_stats) in zip(ours.objects, reference, strict=True):
            np.testing.assert_allclose(obj.j, j_stats, atol=1e-3, err_msg=f"{name} J")
            np.testing.assert_allclose(obj.f, f_stats, atol=1e-3, err_msg=f"{name} F")
        reference_j = np.mean([j[0] for j, _ in reference])
        reference_f = np.mean([f[0] for _, f in reference])
        assert abs(ours.j_mean - reference_j) < 1e-3 and abs(ours.f_mean - reference_f) < 1e-3
        # the perturbations must actually cost something, or the comparison proves little
        assert ours.j_mean < 0.95 and ours.f_mean < 0.95
