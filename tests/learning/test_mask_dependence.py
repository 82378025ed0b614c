"""evaluation.mask_dependence, the checks benchmarks/learning.py runs on every trained model:
a model that ignores its mask fails both. (Training a model that passes them is
tests/learning/test_follows_given_mask.py.)"""

from __future__ import annotations

import numpy as np

from evaluation.mask_dependence import (
    follows_given_object,
    iou,
    lookalike_videos,
    prediction_moves_with_mask,
)
from models import build_model


def test_an_untrained_network_fails_the_look_alike_check():
    result = follows_given_object(build_model("gc", size="tiny").eval(), videos=2)
    assert not result["passed"] and result["overlap"] > 0.9, result


def test_segmenting_both_objects_scores_below_the_bar():
    """The mask-blind answer, 'the salient things', on the check's own videos."""
    j_a = []
    for _, labels in lookalike_videos(6, 8, (64, 48), seed=100_000):
        both = labels[1:] > 0
        j_a += [iou(union, truth == 1) for union, truth in zip(both, labels[1:], strict=True)]
    assert np.mean(j_a) < 0.8


def test_an_untrained_network_does_not_move_with_its_mask(davis_root):
    result = prediction_moves_with_mask(build_model("gc", size="tiny").eval(), davis_root, frames=2)
    assert not result["moved"] and result["iou"] > 0.5, result
