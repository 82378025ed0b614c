"""Reruns of a finished 2-worker run under its name: refused while it is finished; once its
newest checkpoint is truncated, the rerun skips that checkpoint with one warning and resumes
from the one before it.

One short run (the module fixture) serves both tests, in this order: the second truncates
the run's newest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from core.config import load_config
from tracking import model_store
from training.config import PretrainConfig
from training.driver import PreflightError, run_training

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "pretrain_tiny.yaml"
STEPS = 16 // 2  # one epoch: the smaller rank holds 16 clips, 2 per step
EVERY = STEPS // 2


@pytest.fixture(scope="module")
def finished_run(local_image_shards, tmp_path_factory, ray_driver, mlflow_server):
    """(config, TrainingResult) of a finished run with checkpoints at steps 4 and 8."""
    config = load_config(
        PretrainConfig,
        CONFIG_FILE,
        [
            f"data.manifests=[{local_image_shards}]",
            f"run.storage_path={tmp_path_factory.mktemp('checkpoint-runs')}",
            f"run.name=checkpoints-{time.time_ns()}",
            "data.batch_size=2",
            "train.epochs=1",
            f"run.checkpoint_every_steps={EVERY}",
            "run.keep_checkpoints=2",
            "tracking.experiment=test-training",
        ],
    )
    return config, run_training(config)


def test_rerunning_a_finished_run_is_refused_in_one_line(finished_run):
    config, first = finished_run
    assert first.metrics["step"] == STEPS
    with pytest.raises(PreflightError) as refused:
        run_training(config)
    message = str(refused.value)
    assert "\n" not in message
    assert f"run.name = '{config.run.name}': the run finished at step {STEPS}" in message
    run = MlflowClient(first.tracking_uri).get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"  # the refusal did not even reopen the MLflow run
    assert run.data.tags["vos.model_uri"] == first.model_uri  # and logged no second model


def warning_lines(capfd, text: str, timeout: float = 30.0) -> list[str]:
    """The captured lines holding `text`; waits for Ray to forward the workers' logs."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        out, err = capfd.readouterr()
        seen += [line for line in (out + err).splitlines() if text in line]
        if seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_an_unreadable_newest_checkpoint_is_skipped_and_the_run_resumes_before_it(
    finished_run, capfd
):
    config, first = finished_run
    newest = Path(first.checkpoint)
    assert newest.name == f"checkpoint-step-{STEPS:09d}"
    for file in newest.iterdir():  # a copy cut short, as by a full disk or a killed upload
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    capfd.readouterr()

    second = run_training(config)

    assert second.metrics["start_step"] == EVERY  # from the checkpoint before the cut one
    assert second.metrics["step"] == STEPS
    warnings = warning_lines(capfd, f"checkpoint {newest.name} cannot be read, skipped")
    assert len(warnings) == 1, warnings
    # the cut checkpoint keeps its name (Ray Train lists it); the new one gets a name of its own
    assert Path(second.checkpoint).name == f"checkpoint-step-{STEPS:09d}-2"
    assert (
        model_store.load_model(second.checkpoint).config
        == model_store.load_model(first.model_uri).config
    )
