"""Before Ray is touched, a run checks what its config points to and names the problem in one
line: storage, data manifests, the MLflow server, enough clips per worker, the start model."""

from __future__ import annotations

import pytest

from training.config import FinetuneConfig, PretrainConfig
from training.driver import PreflightError, run_training

NO_RAY = "cluster.address=127.0.0.1:1"  # were Ray touched, the error would be a connection error


def expect_preflight_error(config, *fragments: str) -> None:
    with pytest.raises(PreflightError) as raised:
        run_training(config)
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_manifest(make_tiny_config, tmp_path):
    config = make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{tmp_path / 'nothing' / 'manifest.json'}]",
        f"run.storage_path={tmp_path / 'runs'}",
        f"tracking.uri={tmp_path / 'mlruns'}",
        NO_RAY,
    )
    expect_preflight_error(config, "data.manifests:", str(tmp_path / "nothing"))


def test_too_few_clips_for_the_workers(make_tiny_config, local_image_shards, tmp_path):
    config = make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{local_image_shards}]",
        f"run.storage_path={tmp_path / 'runs'}",
        f"tracking.uri={tmp_path / 'mlruns'}",
        "compute.num_workers=8",
        "data.batch_size=8",
        NO_RAY,
    )
    expect_preflight_error(config, "36 clips give each of 8 workers 4 clips", "data.batch_size = 8")


def test_an_mlflow_server_that_does_not_answer(make_tiny_config, local_image_shards, tmp_path):
    config = make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{local_image_shards}]",
        f"run.storage_path={tmp_path / 'runs'}",
        "tracking.uri=http://127.0.0.1:1",
        NO_RAY,
    )
    expect_preflight_error(config, "tracking.uri", "http://127.0.0.1:1", "does not answer")


def test_a_missing_bucket(make_tiny_config, local_image_shards, tmp_path, s3_endpoint):
    config = make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{local_image_shards}]",
        "run.storage_path=s3://no-such-bucket/runs",
        f"tracking.uri={tmp_path / 'mlruns'}",
        NO_RAY,
    )
    expect_preflight_error(config, "run.storage_path", "bucket 'no-such-bucket' does not exist")


def test_a_missing_start_model(make_tiny_config, local_video_shards, tmp_path):
    config = make_tiny_config(
        FinetuneConfig,
        "finetune_tiny.yaml",
        f"init.model_uri={tmp_path / 'no-checkpoint'}",
        f"data.manifests=[{local_video_shards}]",
        f"run.storage_path={tmp_path / 'runs'}",
        f"tracking.uri={tmp_path / 'mlruns'}",
        NO_RAY,
    )
    expect_preflight_error(config, "init.model_uri", "no model file at")
