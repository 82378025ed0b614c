"""An evaluation's MLflow run is never left RUNNING: `vos evaluate` killed with SIGTERM (what
Kubernetes and `ray job stop` send) closes it as KILLED. Real MLflow server, real process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

from datagen.procedural import write_procedural_videos
from models import build_model
from tracking.model_store import save_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for_runs(client: MlflowClient, experiment: str, status: str, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            matching = client.search_runs(
                [found.experiment_id], filter_string=f"attributes.status = '{status}'"
            )
            if matching:
                return matching
        time.sleep(0.2)
    return []


def test_a_killed_evaluation_leaves_no_running_run(mlflow_server, tmp_path):
    data = write_procedural_videos(
        tmp_path / "set", n_sequences=4, n_frames=40, seed=7, size=(160, 120)
    )
    model = save_model(build_model("gc", size="tiny", pretrained_backbone=False), tmp_path / "m.pt")
    experiment = f"killed-evaluation-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable, "pipelines/evaluate.py", "--model", model, "--data", str(data),
        f"tracking.experiment={experiment}", f"out={tmp_path / 'out'}", "device=cpu", "threads=1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    client = MlflowClient(mlflow_server.uri)
    try:
        running = wait_for_runs(client, experiment, "RUNNING", timeout=240)
        assert running, "the evaluation run did not appear as RUNNING while the model ran"
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    run = client.get_run(running[0].info.run_id)
    assert run.info.status == "KILLED"
