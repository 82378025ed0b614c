"""The full-size training recipes follow each paper: lr, total batch, frame-skip curriculum.

Read as plain YAML (no training code), so a recipe that drifts from its paper fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# (model, stage): the paper's learning rate and total batch (clips per step over all GPUs).
# GVOS-SCM's batch size is not known; it follows GC's, the network it builds on.
PAPERS = {
    ("gc", "pretrain"): (1e-5, 8),
    ("gc", "finetune"): (1e-6, 8),
    ("stm", "pretrain"): (1e-5, 4),
    ("stm", "finetune"): (1e-5, 4),
    ("gvos_scm", "pretrain"): (1e-5, 8),
    ("gvos_scm", "finetune"): (1e-5, 8),
}


def recipe(model: str, stage: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{stage}_{model}.yaml").read_text())


@pytest.mark.parametrize(("model", "stage"), PAPERS)
def test_lr_and_total_batch_are_the_papers(model, stage):
    config = recipe(model, stage)
    lr, total_batch = PAPERS[model, stage]
    assert config["model"]["name"] == model
    assert config["train"]["lr"] == pytest.approx(lr, rel=1e-9)
    assert config["data"]["batch_size"] * config["compute"]["num_workers"] == total_batch


@pytest.mark.parametrize(
    ("model", "initial", "final", "every", "by"),
    [
        ("gc", 3, 3, 1, 1),  # GC: a random gap in [1, 3], no curriculum
        ("stm", 5, 25, 10, 5),
        ("gvos_scm", 5, 25, 20, 5),  # GVOS-SCM: +5 every 20 epochs
    ],
)
def test_finetune_curriculum_follows_the_paper(model, initial, final, every, by):
    curriculum = recipe(model, "finetune")["curriculum"]
    assert curriculum == {
        "initial_max_skip": initial,
        "final_max_skip": final,
        "grow_every_epochs": every,
        "grow_by": by,
    }
