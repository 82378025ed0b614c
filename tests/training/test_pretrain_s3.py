"""A 2-worker CPU pretraining run of the tiny model on shards served by a real S3 endpoint,
tracked on a real MLflow server, then rerun under the same name (it resumes).

One run (the session fixture `s3_pretrain_run`) serves several tests; each test checks one
promise of the issue. The rerun test comes last: it extends that run by one epoch.
"""

from __future__ import annotations

import hashlib
import io

import torch
from mlflow.tracking import MlflowClient

from core import storage
from datagen.reader import ClipStream
from models import VOSNetwork
from tracking import model_store
from training.config import PretrainConfig
from training.driver import run_training


def loss_history(result) -> list[float]:
    client = MlflowClient(result.tracking_uri)
    history = client.get_metric_history(result.mlflow_run_id, "train/loss")
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]


def test_every_rank_runs_the_same_steps_on_uneven_shards(s3_pretrain_run, s3_image_shards):
    config, result = s3_pretrain_run
    batch = config.data.batch_size
    stream = ClipStream([s3_image_shards], rank=0, world_size=2, shuffle_buffer=0)
    held = [stream.samples_held(rank) for rank in (0, 1)]
    assert held == [20, 16], "the fixture must split unevenly over two ranks"
    steps_per_epoch = min(held) // batch
    assert result.metrics["step"] == config.train.epochs * steps_per_epoch
    for epoch in range(config.train.epochs):
        for rank in (0, 1):
            keys = read_keys(config, result, epoch, rank)
            assert len(keys) == steps_per_epoch * batch


def read_keys(config, result, epoch: int, rank: int) -> list[str]:
    url = storage.join(
        config.storage_path(), result.run_name, f"sample_keys/epoch-{epoch:04d}/rank-{rank:03d}.txt"
    )
    return storage.read_bytes(url).decode().split()


def test_ranks_read_disjoint_samples_and_none_twice(s3_pretrain_run):
    config, result = s3_pretrain_run
    for epoch in range(config.train.epochs):
        rank0, rank1 = read_keys(config, result, epoch, 0), read_keys(config, result, epoch, 1)
        assert len(set(rank0)) == len(rank0) and len(set(rank1)) == len(rank1)
        assert not set(rank0) & set(rank1)


def test_the_loss_falls_on_an_easy_task(s3_pretrain_run):
    losses = loss_history(s3_pretrain_run[1])
    assert len(losses) == s3_pretrain_run[1].metrics["step"]
    first, last = losses[0], sum(losses[-4:]) / 4
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_checkpoints_go_to_s3_and_only_the_last_k_stay(s3_pretrain_run):
    config, result = s3_pretrain_run
    fs, run_path = storage.filesystem(storage.join(config.storage_path(), result.run_name))
    names = sorted(
        path.rsplit("/", 1)[-1] for path in fs.ls(run_path) if "checkpoint-step-" in path
    )
    total = result.metrics["step"]
    every, keep = config.run.checkpoint_every_steps, config.run.keep_checkpoints
    saved = sorted({*range(every, total + 1, every), total})  # every N steps and at the end
    assert names == [f"checkpoint-step-{step:09d}" for step in saved[-keep:]]
    assert result.checkpoint == storage.join(config.storage_path(), result.run_name, names[-1])
    assert isinstance(model_store.load_model(result.checkpoint), VOSNetwork)


def test_the_mlflow_run_holds_params_metrics_tags_and_the_model(s3_pretrain_run, s3_image_shards):
    config, result = s3_pretrain_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "gc" and params["model.size"] == "tiny"
    assert params["train.lr"] == "0.001" and params["compute.num_workers"] == "2"
    assert params["data.batch_size"] == str(config.data.batch_size)
    for name in ("train/loss", "train/lr", "train/clips_per_s", "train/data_wait_fraction"):
        assert name in run.data.metrics, name
    assert 0.0 <= run.data.metrics["train/data_wait_fraction"] <= 1.0
    tags = run.data.tags
    assert tags["vos.run_name"] == result.run_name
    assert tags["mlflow.source.git.commit"]
    assert tags["data.manifest.0.uri"] == s3_image_shards
    manifest_bytes = storage.read_bytes(s3_image_shards)
    assert tags["data.manifest.0.sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    artifacts = [item.path for item in client.list_artifacts(result.mlflow_run_id, "config")]
    assert "config/pretrain_tiny.yaml" in artifacts and "config/resolved.json" in artifacts

    logged = model_store.load_model(f"runs:/{result.mlflow_run_id}/model")
    final = model_store.load_model(result.checkpoint)
    assert type(logged) is type(final) and logged.config == final.config
    for key, value in logged.state_dict().items():
        assert torch.equal(value, final.state_dict()[key]), key
    assert model_store.load_model(result.model_uri).config == final.config


def test_a_rerun_with_the_same_name_resumes_with_its_optimizer_state(s3_pretrain_run):
    config, first = s3_pretrain_run
    steps_per_epoch = first.metrics["step"] // config.train.epochs
    data = config.model_dump()
    data["run"]["name"] = first.run_name
    data["train"]["epochs"] = config.train.epochs + 1
    second = run_training(PretrainConfig.model_validate(data))
    assert second.run_name == first.run_name
    assert second.mlflow_run_id == first.mlflow_run_id
    assert second.metrics["start_step"] == first.metrics["step"]
    assert second.metrics["step"] == first.metrics["step"] + steps_per_epoch
    # Adam counts its own steps: the count carried over from the first run
    state = torch.load(
        io.BytesIO(storage.read_bytes(storage.join(second.checkpoint, "train_state.pt"))),
        weights_only=True,
    )
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {second.metrics["step"]}
    resumed = MlflowClient(second.tracking_uri).get_metric_history(
        second.mlflow_run_id, "train/resumed_at_step"
    )
    assert [metric.value for metric in resumed] == [first.metrics["step"]]
