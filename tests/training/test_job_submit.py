"""`ray job submit` of pipelines/pretrain.py to a `ray start --head` cluster: the job succeeds
and its run, with the model, appears in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

from models import VOSNetwork
from tracking import model_store

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_pretraining_and_logs_to_mlflow(
    local_image_shards, tmp_path, ray_cluster, mlflow_server
):
    run_name = f"job-submit-{uuid.uuid4().hex[:8]}"
    command = [
        str(Path(sys.executable).with_name("ray")),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard_url,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "pipelines/pretrain.py",
        "--config",
        "configs/pretrain_tiny.yaml",
        f"run.name={run_name}",
        f"run.storage_path={tmp_path / 'runs'}",
        f"data.manifests=[{local_image_shards}]",
        f"tracking.uri={mlflow_server.uri}",
        "tracking.experiment=test-training",
        "train.max_steps=4",
        "data.batch_size=2",
        "data.loader_workers=0",
        "compute.num_workers=1",
    ]
    job = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    log = job.stdout[-4000:] + job.stderr[-4000:]
    assert job.returncode == 0, log
    assert "succeeded" in job.stdout.lower(), log

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-training")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`vos.run_name` = '{run_name}'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "gc"
    assert "train/loss" in run.data.metrics
    assert isinstance(model_store.load_model(f"runs:/{run.info.run_id}/model"), VOSNetwork)
