"""MLflow bookkeeping of a training run: where it is tracked, what it is tagged with, its metrics.

The driver opens the run (`open_run`) before the workers start: flattened config as params,
the config file as an artifact, the git commit, a fingerprint of the source and the data
manifests' URIs and hashes as tags. A rerun with the same run name continues the same MLflow
run (found by its `vos.run_name` tag), as Ray Train continues from the run's checkpoints.
Rank 0 then logs per-step metrics through a `MetricBuffer`, and the driver logs the model
and closes the run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from core.config import flatten

__all__ = [
    "ManifestRecord",
    "MetricBuffer",
    "finish_run",
    "git_commit",
    "open_run",
    "resolve_tracking_uri",
    "server_reachable",
    "source_fingerprint",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = [
    "core", "models", "datagen", "tracking", "training", "evaluation", "registry", "pipelines",
    "orchestration", "vos",
]  # fmt: skip
RUN_NAME_TAG = "vos.run_name"
MLFLOW_BATCH_LIMIT = 100  # params/tags per log_batch request (MLflow's own limit)
PARAM_VALUE_LIMIT = 6000  # characters


@dataclass(frozen=True)
class ManifestRecord:
    """One data manifest as the run records it."""

    url: str
    sha256: str
    clips: int


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else a local ./mlruns folder (absolute, so
    that workers in other folders write to the same place)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return (Path.cwd() / "mlruns").as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def server_reachable(tracking_uri: str, timeout: float = 10.0) -> bool:
    """An HTTP tracking server answers its health check (other stores are not checked)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def git_commit(repo_root: Path = REPO_ROOT) -> str:
    """The checked-out commit (with `-dirty` when files changed), else $VOS_GIT_COMMIT, else
    "unknown" (a `ray job submit --working-dir .` upload carries no .git folder)."""
    try:
        commit = _git(repo_root, "rev-parse", "HEAD")
        dirty = _git(repo_root, "status", "--porcelain", "--untracked-files=no")
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("VOS_GIT_COMMIT", "unknown")


def _git(repo_root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo_root), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.stdout.strip()


def source_fingerprint(repo_root: Path = REPO_ROOT) -> str:
    """sha256 over the project's Python sources: identifies the code even without git."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((repo_root / package).rglob("*.py")):
            digest.update(str(path.relative_to(repo_root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_tags(run_name: str, stage: str, manifests: list[ManifestRecord]) -> dict[str, str]:
    tags = {
        RUN_NAME_TAG: run_name,
        "vos.stage": stage,
        "mlflow.runName": run_name,
        "mlflow.source.git.commit": git_commit(),
        "vos.source_sha256": source_fingerprint(),
    }
    for index, manifest in enumerate(manifests):
        tags[f"data.manifest.{index}.uri"] = manifest.url
        tags[f"data.manifest.{index}.sha256"] = manifest.sha256
        tags[f"data.manifest.{index}.clips"] = str(manifest.clips)
    return tags


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    config: Any,
    manifests: list[ManifestRecord],
    config_file: str | Path | None = None,
) -> tuple[str, bool]:
    """Create the MLflow run of `run_name`, or find it again on a rerun; returns (run_id, resumed).

    Logs the flattened config as params, the tags of `run_tags`, the config file and the
    resolved config (config/resolved.json). MLflow params cannot change, so a rerun logs only
    new keys and records a changed value as a `config.changed.<key>` tag.
    """
    client = MlflowClient(tracking_uri)
    run, resumed = _find_or_create_run(client, _experiment_id(client, experiment), run_name)
    params = {key: _param_value(value) for key, value in flatten(config).items()}
    logged = run.data.params
    tags = run_tags(run_name, config.stage, manifests)
    tags.update(
        {
            f"config.changed.{key}": value
            for key, value in params.items()
            if logged.get(key, value) != value
        }
    )
    new_params = [Param(key, value) for key, value in params.items() if key not in logged]
    tag_list = [RunTag(key, value) for key, value in tags.items()]
    for start in range(0, max(len(new_params), len(tag_list)), MLFLOW_BATCH_LIMIT):
        client.log_batch(
            run.info.run_id,
            params=new_params[start : start + MLFLOW_BATCH_LIMIT],
            tags=tag_list[start : start + MLFLOW_BATCH_LIMIT],
        )
    if config_file is not None:
        client.log_artifact(run.info.run_id, str(config_file), artifact_path="config")
    client.log_text(run.info.run_id, config.model_dump_json(indent=2), "config/resolved.json")
    return run.info.run_id, resumed


def _find_or_create_run(client: MlflowClient, experiment_id: str, run_name: str):
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0], True
    return client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name}), False


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another driver
        return client.get_experiment_by_name(name).experiment_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


@contextmanager
def pointed_at(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (and `models:/`, `runs:/` URIs) at `tracking_uri` for a while,
    then back where it was, so that calling a stage leaves the caller's MLflow setup alone."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextmanager
def resumed_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Make `run_id` this process's active MLflow run, for APIs that log to the active run
    (`mlflow.pyfunc.log_model`), whatever experiment or run the process had active before."""
    experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    with pointed_at(tracking_uri):
        # start_run refuses a run outside the active experiment, so that experiment becomes active
        mlflow.set_experiment(experiment_id=experiment_id)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            yield


def finish_run(tracking_uri: str, run_id: str, succeeded: bool) -> None:
    MlflowClient(tracking_uri).set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


class MetricBuffer:
    """Per-step metrics of rank 0, sent to MLflow in batches (one request per flush)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[Metric] = []

    def add(self, step: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.pending += [
            Metric(key, float(value), timestamp, step) for key, value in metrics.items()
        ]

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)


def run_id_by_name(tracking_uri: str, run_name: str) -> str:
    """The MLflow run id of the training run called `run_name` (in any experiment)."""
    runs = MlflowClient(tracking_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        max_results=1,
    )
    if not runs:
        raise LookupError(f"run {run_name} is not in MLflow at {tracking_uri}")
    return runs[0].info.run_id
