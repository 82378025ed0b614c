"""The copy-first-mask baseline shown beside every model: on the DAVIS 2016 sample it gives
J&F 0.230 (the figure issue 13 measured independently), sequence by sequence in name order."""

from __future__ import annotations

import pytest

from evaluation.folders import copy_first_mask
from evaluation.metrics import summarize


def test_copying_the_first_mask_scores_as_measured(davis_root):
    scores = copy_first_mask(davis_root)
    assert [score.name for score in scores] == sorted(score.name for score in scores)
    assert summarize(scores)["JF_mean"] == pytest.approx(0.230, abs=1e-3)
    only = copy_first_mask(davis_root, ["blackswan"])
    assert [score.name for score in only] == ["blackswan"]
    assert only[0].jf_mean == pytest.approx(0.440, abs=1e-3)
