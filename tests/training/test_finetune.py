"""Fine-tuning from a registered model (models:/<name>@champion) on procedural video clips,
with the frame-skip curriculum: the largest gap between a clip's frames grows every epoch."""

from __future__ import annotations

import mlflow
import torch
from mlflow.tracking import MlflowClient

from core import storage
from models import build_model
from tracking import model_store
from training.config import FinetuneConfig
from training.driver import run_training

REGISTERED = "test-training-gc"
LIMITS = [2, 3, 4]  # the curriculum below: max_skip of epochs 0, 1, 2


def largest_gap(clip: str) -> int:
    """The largest gap (raw frames) of a clip drawn from a window: `<key>@<i>,<j>,<k>`."""
    first, second, third = (int(index) for index in clip.split("@")[1].split(","))
    return max(second - first, third - second)


@torch.no_grad()
def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    second = dict(b.named_parameters())
    return sum(float((p - second[n]).norm()) for n, p in a.named_parameters())


def test_finetuning_starts_from_the_champion_and_follows_the_curriculum(
    s3_pretrain_run, local_video_shards, tmp_path, make_tiny_config, ray_driver, mlflow_server
):
    pretrain_config, pretrained = s3_pretrain_run
    mlflow.set_tracking_uri(mlflow_server.uri)
    version = mlflow.register_model(pretrained.model_uri, REGISTERED)
    MlflowClient(mlflow_server.uri).set_registered_model_alias(
        REGISTERED, "champion", version.version
    )

    config = make_tiny_config(
        FinetuneConfig,
        "finetune_tiny.yaml",
        f"init.model_uri=models:/{REGISTERED}@champion",
        f"data.manifests=[{local_video_shards}]",
        f"run.storage_path={tmp_path / 'runs'}",
        "run.record_sample_keys=true",
        f"curriculum.initial_max_skip={LIMITS[0]}",
        f"curriculum.final_max_skip={LIMITS[-1]}",
        "curriculum.grow_every_epochs=1",
        "curriculum.grow_by=1",
        f"train.epochs={len(LIMITS)}",
    )
    result = run_training(config)

    # every epoch trained only on clips within that epoch's frame-gap limit, and the limit grew
    for epoch, limit in enumerate(LIMITS):
        keys = []
        for rank in (0, 1):
            url = storage.join(
                config.storage_path(),
                result.run_name,
                f"sample_keys/epoch-{epoch:04d}/rank-{rank:03d}.txt",
            )
            keys += storage.read_bytes(url).decode().split()
        assert keys and max(largest_gap(clip) for clip in keys) <= limit
    assert max(largest_gap(clip) for clip in keys) > LIMITS[0]
    history = MlflowClient(mlflow_server.uri).get_metric_history(
        result.mlflow_run_id, "train/max_skip"
    )
    assert sorted({int(metric.value) for metric in history}) == LIMITS

    # the run started from the champion's weights, not from a new network
    champion = model_store.load_model(f"models:/{REGISTERED}@champion")
    finetuned = model_store.load_model(result.checkpoint)
    torch.manual_seed(pretrain_config.data.seed)
    fresh = build_model("gc", size="tiny")
    assert distance(finetuned, champion) < 0.5 * distance(fresh, champion)
    run = MlflowClient(mlflow_server.uri).get_run(result.mlflow_run_id)
    assert run.data.params["init.model_uri"] == f"models:/{REGISTERED}@champion"
    assert run.data.params["train.lr"] == str(config.train.lr)
