"""benchmarks/memory_rule.py re-scores a learning run's models under each GC memory rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from datagen.procedural import write_procedural_videos
from models import build_model
from tracking.model_store import save_model

REPO = Path(__file__).resolve().parents[2]


def test_scores_each_model_under_each_weight_and_skips_stm(tmp_path):
    videos = write_procedural_videos(tmp_path / "davis", 1, 6, seed=2, size=(64, 48))
    models = {}
    for name in ("gc", "stm"):
        models[name] = save_model(
            build_model(name, size="tiny", train_size=48), tmp_path / f"{name}.pt"
        )
    learning = tmp_path / "learning.json"
    learning.write_text(json.dumps({"models": models, "tracking_uri": str(tmp_path / "mlruns")}))
    out = tmp_path / "rule.json"

    done = subprocess.run(
        [sys.executable, "benchmarks/memory_rule.py", "--learning-json", str(learning),
         "--data", str(videos), "--weights", "paper", "1.0", "--mask-checks", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped stm: it has no GC memory" in done.stdout
    report = json.loads(out.read_text())
    by_weight = report["results"]["gc"]["by_weight"]
    assert set(by_weight) == {"paper", "1.0"}
    for scores in by_weight.values():
        assert 0.0 <= scores["JF_mean"] <= 1.0 and len(scores["sequences"]) == 1
        assert isinstance(scores["mask_dependence"]["passed"], bool)
        assert 0.0 <= scores["mask_shift"]["iou"] <= 1.0
    assert "stm" not in report["results"]


def test_a_weight_outside_0_1_is_refused_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/memory_rule.py", "--learning-json", "x.json",
         "--data", ".", "--weights", "1.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "a weight is 'paper' or in (0, 1], got 1.5" in done.stderr
