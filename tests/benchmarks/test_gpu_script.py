"""benchmarks/gpu.sh, the one prepared GPU run, in its CPU smoke mode: every step runs and the
rows for RESULTS.md come out, so the script works the day a GPU is lent for a few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_every_step_in_smoke_mode(tmp_path):
    # the script starts its own Ray: not the test session's stack and its token
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    inference = json.loads((tmp_path / "inference.json").read_text())
    assert set(inference["models"]) == {"gc", "gvos_scm", "stm"}
    for model in ("gc", "gvos_scm", "stm"):
        training = json.loads((tmp_path / f"train_{model}.json").read_text())["training"]
        assert training["clips_per_s_per_worker"] > 0
        assert 0 <= training["data_wait_fraction"] <= 1
    rows = (tmp_path / "rows.md").read_text().splitlines()
    assert sum(row.startswith("| inference |") for row in rows) == 3
    assert sum(row.startswith("| training |") for row in rows) == 3
