"""Fixtures of the training tests: tiny procedural shard sets (written with datagen's own
functions), this process as a Ray driver of the stack's cluster, tiny training configs and
one 2-worker pretraining run on S3 that several test modules inspect."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_config
from datagen.generate import GenerateConfig, plan_set, write_set_manifest
from datagen.shards import build_shard

REPO = Path(__file__).resolve().parents[2]
EASY_IMAGE_SET = ["source.procedural.count=36", "clips.clips_per_shard=8"]


def write_shards(url: str, config_file: str, overrides: list[str]) -> str:
    """Make the shard set `configs/<config_file>` describes at `url`, in this process (no Ray:
    `pipelines/generate.py` does the same with one Ray task per shard); returns the manifest URL."""
    config = load_config(
        GenerateConfig, REPO / "configs" / config_file, [f"output.url={url}", *overrides]
    )
    plan = plan_set(config)
    results = [build_shard(spec, config.output.set_url) for spec in plan.specs]
    return write_set_manifest(plan, results)[0]


@pytest.fixture(scope="session")
def local_image_shards(tmp_path_factory) -> str:
    """36 procedural image clips (64 px) in 5 shards of 8, 8, 8, 8 and 4 clips, on local disk.

    Five shards do not split evenly over two ranks: one rank holds 20 clips, the other 16.
    """
    folder = tmp_path_factory.mktemp("image-shards")
    return write_shards(str(folder), "generate_demo.yaml", EASY_IMAGE_SET)


@pytest.fixture(scope="session")
def s3_image_shards(s3_endpoint) -> str:
    """The same set as `local_image_shards`, on the S3 endpoint."""
    bucket = s3_endpoint.make_bucket("training-shards")
    return write_shards(f"{bucket}/images", "generate_demo.yaml", EASY_IMAGE_SET)


@pytest.fixture(scope="session")
def local_video_shards(tmp_path_factory) -> str:
    """Procedural video clips (64 px, frame gaps 1..4) for fine-tuning."""
    folder = tmp_path_factory.mktemp("video-shards")
    return write_shards(
        str(folder),
        "generate_demo_videos.yaml",
        ["source.procedural.count=6", "clips.clips_per_source=4", "clips.clips_per_shard=8"],
    )


@pytest.fixture(scope="session")
def ray_driver(ray_cluster):
    """This test process joined, as a Ray driver, to the stack's `ray start --head` cluster."""
    import ray

    if not ray.is_initialized():  # an earlier stage may have connected this process already
        ray.init(address=ray_cluster.gcs_address, logging_level="WARNING")
    yield ray_cluster
    ray.shutdown()


def tiny_config(schema, config_file: str, *overrides: str):
    """A tiny training config for the tests: 2 CPU workers, 2 clips per step, every step logged."""
    return load_config(
        schema,
        REPO / "configs" / config_file,
        [
            "data.batch_size=2",
            "train.log_every_steps=1",
            "tracking.experiment=test-training",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def s3_pretrain_run(s3_image_shards, s3_endpoint, ray_driver, mlflow_server):
    """(config, TrainingResult) of a 2-worker pretraining run with shards and checkpoints on S3."""
    from training.config import PretrainConfig
    from training.driver import run_training

    bucket = s3_endpoint.make_bucket("training-runs")
    config = tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{s3_image_shards}]",
        f"run.storage_path={bucket}/runs",
        "train.epochs=4",
        "run.checkpoint_every_steps=12",
        "run.keep_checkpoints=2",
        "run.record_sample_keys=true",
    )
    return config, run_training(config, config_file=str(REPO / "configs" / "pretrain_tiny.yaml"))


@pytest.fixture(scope="session")
def make_tiny_config():
    """`tiny_config` for the test modules (they cannot import this conftest)."""
    return tiny_config
