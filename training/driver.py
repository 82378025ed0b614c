"""The driver side of a training run: check everything, start Ray Train, log the outcome.

`run_training(config)` does, in order:

1. preflight (before Ray is touched): the storage can be reached, every data manifest can be
   read (its URL, sha256 and clip count go to MLflow), each rank gets at least one batch, the
   model to fine-tune from exists; each problem is one line in a `PreflightError`;
2. refuses a rerun of a finished run (its newest readable checkpoint's train state is the
   end of the run this config describes): it would train nothing and log a second model;
3. opens the MLflow run (a rerun with the same run name continues the same MLflow run);
4. builds a Ray Train V2 `TorchTrainer`: `ScalingConfig` (workers, CPUs/GPUs and extra
   resources per worker from the config), `TorchConfig` (NCCL on GPUs, gloo on CPUs),
   `RunConfig(name, storage_path)` with `FailureConfig(max_failures)` (a failed worker group
   restarts from the newest readable checkpoint) and `CheckpointConfig(num_to_keep)`. Ray
   Train V2 has no `Trainer.restore`: a run resumes when it is started again with the same
   name and storage path, which is why every run gets a unique name unless one is given;
5. after `fit()`: loads the final checkpoint, logs the model with `model_store.log_model`, closes
   the MLflow run and returns a `TrainingResult` (run name, MLflow run id, checkpoint URL,
   model URI, final metrics) for the evaluation and promotion stages.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import ray
import torch
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer
from rich.markup import escape
from rich.table import Table

from core import cluster, storage
from core.cli import console, one_line
from datagen.manifest import manifest_url, read_manifest
from tracking import model_store, runs
from training.config import TrainConfig
from training.data import clip_stream, replay_warnings, shard_problems
from training.loop import (
    TRAIN_STATE_FILE,
    TrainState,
    checkpoint_order,
    run_is_complete,
    train_loop_per_worker,
)

__all__ = ["PreflightError", "TrainingResult", "build_trainer", "run_training"]


class PreflightError(ValueError):
    """Something outside the config file (storage, data, model) that makes the run impossible."""


@dataclass
class TrainingResult:
    """What a finished run hands to the next stages."""

    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    checkpoint: str
    model_uri: str
    metrics: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_training(config: TrainConfig, config_file: str | None = None) -> TrainingResult:
    tracking_uri = runs.resolve_tracking_uri(config.tracking.uri)
    with runs.pointed_at(tracking_uri):  # `models:/` start models resolve on that server
        return _run_training(config, config_file, tracking_uri)


def _run_training(
    config: TrainConfig, config_file: str | None, tracking_uri: str
) -> TrainingResult:
    started = time.monotonic()
    run_name = config.run_name()
    storage_path = config.storage_path()
    manifests = preflight(config, storage_path, tracking_uri)
    refuse_a_finished_run(config, run_name, storage.join(storage_path, run_name))
    mlflow_run_id, resumed = runs.open_run(
        tracking_uri, config.tracking.experiment, run_name, config, manifests, config_file
    )
    console.print(
        f"[bold]{config.stage}[/bold] run [bold]{run_name}[/bold] "
        f"({'resuming' if resumed else 'new'}), MLflow run {mlflow_run_id} at {runs.mask_credentials(tracking_uri)}"
    )
    connect_ray(config.cluster.address)
    warn_if_cluster_is_short(config)
    trainer = build_trainer(config, run_name, storage_path, tracking_uri, mlflow_run_id)
    try:
        result = trainer.fit()
        checkpoint = storage.join(storage_path, run_name, os.path.basename(result.checkpoint.path))
        model_uri = log_final_model(config, tracking_uri, mlflow_run_id, checkpoint)
    except BaseException:
        runs.finish_run(tracking_uri, mlflow_run_id, succeeded=False)
        raise
    runs.finish_run(tracking_uri, mlflow_run_id, succeeded=True)
    outcome = TrainingResult(
        run_name=run_name,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=tracking_uri,
        checkpoint=checkpoint,
        model_uri=model_uri,
        metrics=dict(result.return_value or result.metrics or {}),
        seconds=time.monotonic() - started,
    )
    print_summary(outcome)
    return outcome


# -- preflight ----------------------------------------------------------------------------------


def preflight(
    config: TrainConfig, storage_path: str, tracking_uri: str
) -> list[runs.ManifestRecord]:
    """Check what the config points to; returns the manifests as the run records them.

    Every shard of every set must be in its folder with the manifest's size (one listing per
    set, so a deleted or truncated shard stops the run here, not at its first read). A plan
    that replays each image clip many times gets a one-line warning per image set.
    """
    try:
        storage.check_storage(storage_path)
    except Exception as err:
        raise PreflightError(f"run.storage_path = {storage_path!r}: {one_line(err)}") from None
    if not runs.server_reachable(tracking_uri):
        raise PreflightError(
            f"tracking.uri: the MLflow server at {runs.mask_credentials(tracking_uri)} does not answer "
            "(set tracking.uri or MLFLOW_TRACKING_URI)"
        )
    manifests = [manifest_record(url) for url in config.data.manifests]
    first_epoch = clip_stream(config, rank=0, world_size=config.compute.num_workers, epoch=0)
    for url, manifest in zip(config.data.manifests, first_epoch.manifests, strict=True):
        try:
            problem = shard_problems(url, manifest)
        except Exception as err:
            raise PreflightError(f"data.manifests: {url}: {one_line(err)}") from None
        if problem:
            raise PreflightError(f"data.manifests: {url}: {problem}")
    if first_epoch.samples_per_rank() < config.data.batch_size:
        raise PreflightError(
            f"data: {sum(m.clips for m in manifests)} clips give each of "
            f"{config.compute.num_workers} workers {first_epoch.samples_per_rank()} clips, fewer "
            f"than data.batch_size = {config.data.batch_size}"
        )
    for warning in replay_warnings(config, config.compute.num_workers):
        console.print(f"[yellow]{escape(warning)}[/yellow]", soft_wrap=True, highlight=False)
    if config.init is not None:
        check_model_exists(config.init.model_uri)
    return manifests


def manifest_record(url: str) -> runs.ManifestRecord:
    try:
        manifest = read_manifest(url)
        raw = storage.read_bytes(manifest_url(url))
    except Exception as err:
        raise PreflightError(f"data.manifests: {url}: {one_line(err)}") from None
    return runs.ManifestRecord(
        url=url,
        sha256=hashlib.sha256(raw).hexdigest(),
        clips=int(manifest["total_samples"]),
        kind=manifest.get("kind"),
        generator=manifest.get("config"),
    )


def check_model_exists(uri: str) -> None:
    if uri.startswith(("models:/", "runs:/")):
        try:
            mlflow.models.get_model_info(uri)
        except Exception as err:
            raise PreflightError(f"init.model_uri = {uri!r}: {one_line(err)}") from None
        return
    model_file = uri if uri.endswith(".pt") else storage.join(uri, model_store.MODEL_FILE)
    if not storage.exists(model_file):
        raise PreflightError(f"init.model_uri = {uri!r}: no model file at {model_file}")


def refuse_a_finished_run(config: TrainConfig, run_name: str, run_dir: str) -> None:
    """A rerun of a run whose newest readable checkpoint is its end: one line, PreflightError.

    More epochs or steps in the config make the same run unfinished: it trains on.
    """
    state = newest_train_state(run_dir)
    if state is None or not run_is_complete(config, state):
        return
    if state.epoch >= config.train.epochs:
        goal = f"all train.epochs = {config.train.epochs}"
    else:
        goal = f"train.max_steps = {config.train.max_steps}"
    raise PreflightError(
        f"run.name = {run_name!r}: the run finished at step {state.step} ({goal}); give a new "
        "run.name, or more train.epochs / train.max_steps to train it further"
    )


def newest_train_state(run_dir: str) -> TrainState | None:
    """The train state in the newest checkpoint folder of `run_dir` that holds a readable one."""
    fs, path = storage.filesystem(run_dir)
    fs.invalidate_cache(path)
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return None
    checkpoints = sorted((n for n in names if checkpoint_order(n)), key=checkpoint_order)
    for name in reversed(checkpoints):
        try:
            data = storage.read_bytes(storage.join(run_dir, name, TRAIN_STATE_FILE))
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return TrainState(**saved["state"])
        except Exception:  # noqa: BLE001 - unreadable: the training loop skips it too
            continue
    return None


# -- Ray ----------------------------------------------------------------------------------------


def connect_ray(address: str | None) -> None:
    """Join the configured cluster (or RAY_ADDRESS, or a new local one) unless joined already."""
    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)


def warn_if_cluster_is_short(config: TrainConfig) -> None:
    """Ray Train waits for resources it cannot get; say so at once instead of only waiting."""
    compute = config.compute
    needed = {
        name: amount * compute.num_workers for name, amount in compute.ray_resources().items()
    }
    available = ray.cluster_resources()
    short = {name: amount for name, amount in needed.items() if available.get(name, 0) < amount}
    if short:
        have = ", ".join(f"{available.get(name, 0):g} {name}" for name in short)
        want = ", ".join(f"{amount:g} {name}" for name, amount in short.items())
        console.print(
            f"[yellow]the cluster has {have} now; {compute.num_workers} workers need {want}: "
            "training starts when an autoscaler adds nodes (or lower compute.num_workers)[/yellow]"
        )


def build_trainer(
    config: TrainConfig,
    run_name: str,
    storage_path: str,
    tracking_uri: str,
    mlflow_run_id: str,
) -> TorchTrainer:
    compute = config.compute
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": storage.join(storage_path, run_name),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        },
        torch_config=TorchConfig(backend="nccl" if compute.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=compute.num_workers,
            use_gpu=compute.use_gpu,
            resources_per_worker=compute.ray_resources(),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
            worker_runtime_env=cluster.runtime_env(),
        ),
    )


# -- after training -----------------------------------------------------------------------------


def log_final_model(config: TrainConfig, tracking_uri: str, run_id: str, checkpoint: str) -> str:
    """Log the final checkpoint's model to the run; returns its MLflow model URI."""
    model = model_store.load_model(checkpoint)
    with runs.resumed_run(tracking_uri, run_id):
        model_uri = model_store.log_model(
            model,
            metadata={"vos_checkpoint": checkpoint, "vos_stage": config.stage},
        )
        mlflow.set_tag("vos.checkpoint", checkpoint)
        mlflow.set_tag("vos.model_uri", model_uri)
    return model_uri


def print_summary(outcome: TrainingResult) -> None:
    table = Table(title=f"training run {outcome.run_name}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "MLflow run", f"{outcome.mlflow_run_id} ({runs.mask_credentials(outcome.tracking_uri)})"
    )
    table.add_row("model", outcome.model_uri)
    table.add_row("checkpoint", outcome.checkpoint)
    for key in ("step", "epoch", "loss", "start_step"):
        if key in outcome.metrics:
            table.add_row(
                key, f"{outcome.metrics[key]:.4g}" if key == "loss" else str(outcome.metrics[key])
            )
    table.add_row("time", f"{outcome.seconds:.0f} s")
    console.print(table)
