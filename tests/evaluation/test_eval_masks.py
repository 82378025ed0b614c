"""`vos eval-masks` on folders of masks: JSON, table, and one-line errors for bad folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.masks import read_mask, write_mask
from pipelines import eval_masks
from tests.evaluation.davis_reference import official_scores


def gt_folder(davis_root, sequence):
    return davis_root / "Annotations" / "480p" / sequence


def write_predictions(davis_root, pred_root, perturb=None):
    """Predictions for every frame: palette PNGs for one sequence, 0/255 for the other."""
    for index, sequence in enumerate(
        sorted(p.name for p in (davis_root / "Annotations" / "480p").iterdir())
    ):
        for frame, path in enumerate(sorted(gt_folder(davis_root, sequence).glob("*.png"))):
            labels = read_mask(path)
            if perturb is not None:
                labels = perturb(labels, frame)
            target = pred_root / sequence / path.name
            if index % 2 == 0:
                write_mask(target, labels)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((labels > 0).astype(np.uint8) * 255).save(target)


def test_perfect_predictions_score_one(davis_subset, tmp_path):
    write_predictions(davis_subset, tmp_path / "pred")
    out = tmp_path / "scores.json"
    assert (
        eval_masks.main(
            ["--pred", str(tmp_path / "pred"), "--gt", str(davis_subset), "--json", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report) == {"J_mean", "F_mean", "JF_mean", "sequences"}
    assert report["J_mean"] == report["F_mean"] == report["JF_mean"] == 1.0
    assert report["sequences"] == {
        "blackswan": {"J": 1.0, "F": 1.0},
        "car-shadow": {"J": 1.0, "F": 1.0},
    }


def test_perturbed_predictions_match_the_official_code(davis_subset, tmp_path, capsys):
    def perturb(labels, frame):
        return ndimage.binary_erosion(labels > 0, iterations=2 + 2 * frame).astype(np.uint8)

    write_predictions(davis_subset, tmp_path / "pred", perturb)
    out = tmp_path / "scores.json"
    assert (
        eval_masks.main(
            ["--pred", str(tmp_path / "pred"), "--gt", str(davis_subset), "--json", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    for sequence, scores in report["sequences"].items():
        truth = [read_mask(p) for p in sorted(gt_folder(davis_subset, sequence).glob("*.png"))]
        prediction = [perturb(labels, frame) for frame, labels in enumerate(truth)]
        ((j_stats, f_stats),) = official_scores(truth, prediction)
        assert scores["J"] == pytest.approx(j_stats[0], abs=1e-3)
        assert scores["F"] == pytest.approx(f_stats[0], abs=1e-3)
        assert 0 <= scores["J"] < 0.99 and 0 <= scores["F"] < 0.99
    means = np.mean([[s["J"], s["F"]] for s in report["sequences"].values()], axis=0)
    assert report["J_mean"] == pytest.approx(means[0]) and report["F_mean"] == pytest.approx(
        means[1]
    )
    assert report["JF_mean"] == pytest.approx(means.mean())
    printed = capsys.readouterr().out
    assert "blackswan" in printed and "car-shadow" in printed and "J&F" in printed


def run_expecting_error(capsys, pred, gt):
    assert eval_masks.main(["--pred", str(pred), "--gt", str(gt)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_extra_and_mis_sized_frames_are_named(davis_subset, tmp_path, capsys):
    pred = tmp_path / "pred"
    write_predictions(davis_subset, pred)

    (pred / "blackswan" / "00003.png").unlink()
    line = run_expecting_error(capsys, pred, davis_subset)
    assert "blackswan: missing predicted mask 00003.png" in line

    write_mask(pred / "blackswan" / "00003.png", np.zeros((480, 854), np.uint8))
    write_mask(pred / "blackswan" / "00099.png", np.zeros((480, 854), np.uint8))
    line = run_expecting_error(capsys, pred, davis_subset)
    assert "blackswan: extra predicted mask 00099.png" in line

    (pred / "blackswan" / "00099.png").unlink()
    write_mask(pred / "car-shadow" / "00002.png", np.zeros((240, 427), np.uint8))
    line = run_expecting_error(capsys, pred, davis_subset)
    assert "car-shadow/00002: prediction is 427x240, ground truth is 854x480" in line

    shutil.rmtree(pred / "car-shadow")
    line = run_expecting_error(capsys, pred, davis_subset)
    assert "car-shadow: no predictions" in line


def test_first_and_last_frames_may_be_absent(davis_subset, tmp_path):
    pred = tmp_path / "pred"
    write_predictions(davis_subset, pred)
    for sequence in ("blackswan", "car-shadow"):
        frames = sorted((pred / sequence).glob("*.png"))
        frames[0].unlink()
        frames[-1].unlink()
    assert (
        eval_masks.main(
            ["--pred", str(pred), "--gt", str(davis_subset), "--sequences", "blackswan"]
        )
        == 0
    )
