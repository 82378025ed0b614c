"""A training worker killed mid-run: Ray Train restarts the worker group from the last
checkpoint and the run finishes with its step counter carried on (not restarted from 0), and
the steps re-run after that checkpoint are not logged to MLflow a second time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from core.config import load_config
from tracking.runs import run_id_by_name
from training.config import PretrainConfig
from training.driver import run_training

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "pretrain_tiny.yaml"
CHECKPOINT_EVERY = 8  # the kill comes soon after step 9, well before the next checkpoint


def checkpoint_registered(run_dir: Path, step: int) -> bool:
    """Ray Train lists a checkpoint in its snapshot once it is complete and registered."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return f"checkpoint-step-{step:09d}" in snapshot.read_text()
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def last_logged_step(tracking_uri: str, run_name: str) -> int:
    """The highest step of the run's loss in MLflow (0 before the run or its first step)."""
    try:
        run_id = run_id_by_name(tracking_uri, run_name)
    except LookupError:
        return 0
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss")
    return max((metric.step for metric in history), default=0)


def live_train_workers() -> list:
    job_id = ray.get_runtime_context().get_job_id()
    return list_actors(
        filters=[
            ("class_name", "=", "RayTrainWorker"),
            ("state", "=", "ALIVE"),
            ("job_id", "=", job_id),
        ]
    )


def test_a_killed_worker_is_replaced_and_training_continues(
    local_image_shards, tmp_path, ray_driver, mlflow_server
):
    config = load_config(
        PretrainConfig,
        CONFIG_FILE,
        [
            f"data.manifests=[{local_image_shards}]",
            f"run.storage_path={tmp_path / 'runs'}",
            "data.batch_size=2",
            "train.epochs=3",
            f"run.checkpoint_every_steps={CHECKPOINT_EVERY}",
            "run.max_failures=1",
            "train.log_every_steps=1",  # every step is in MLflow before the next one
            "tracking.experiment=test-training",
        ],
    )
    run_name = config.run_name()
    config.run.name = run_name
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(config)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = err

    trainer = threading.Thread(target=train)
    trainer.start()
    run_dir = tmp_path / "runs" / run_name
    deadline = time.monotonic() + 300
    # killed once a step after the first checkpoint is in MLflow: the restarted workers re-run it
    while not (
        checkpoint_registered(run_dir, CHECKPOINT_EVERY)
        and (logged_before_kill := last_logged_step(mlflow_server.uri, run_name)) > CHECKPOINT_EVERY
    ):
        assert trainer.is_alive(), f"training ended before its first checkpoint: {outcome}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    victim = live_train_workers()[-1]
    os.kill(victim.pid, signal.SIGKILL)
    trainer.join(timeout=600)
    assert not trainer.is_alive()
    assert "error" not in outcome, outcome.get("error")

    result = outcome["result"]
    total = result.metrics["step"]
    assert total == 3 * (16 // 2)  # every planned step ran, once
    assert CHECKPOINT_EVERY <= result.metrics["start_step"] < total  # restarted from a checkpoint
    client = MlflowClient(result.tracking_uri)
    resumed = client.get_metric_history(result.mlflow_run_id, "train/resumed_at_step")
    assert [metric.value for metric in resumed] == [result.metrics["start_step"]]
    # the restarted workers re-ran steps that MLflow held already; each step is there once
    assert result.metrics["start_step"] < logged_before_kill
    losses = client.get_metric_history(result.mlflow_run_id, "train/loss")
    assert sorted(metric.step for metric in losses) == list(range(1, total + 1))
