"""MLflow bookkeeping of a run: where it is tracked, what it is tagged with, what it read, its metrics.

The driver opens a training run (`open_run`) before the workers start: the flattened config as
params, the config file as an artifact, the git commit, a fingerprint of the source and each
shard set it reads as an MLflow dataset input (the manifest's URI as source, its sha256 as
digest, clip count and generator config as profile). A rerun with the same run name continues
the same MLflow run (found by its `vos.run_name` tag), as Ray Train continues from the run's
checkpoints. Rank 0 then logs per-step metrics through a `MetricBuffer`, and the driver logs
the model and closes the run.

What it guarantees besides:

* the commit is the checkout's (`git rev-parse HEAD`), else `$VOS_GIT_COMMIT` (what the
  submitter of a `ray job submit --working-dir .` passes: the upload has no `.git`); whether
  the tree had uncommitted changes is the `vos.git_dirty` tag (`$VOS_GIT_DIRTY`). `git_env()`
  gives a submitter those two variables;
* no tracking URI is printed with its credentials: messages go through `mask_credentials`;
* without a configured URI, the local stack's MLflow server is used when it is up, else the
  error says in one line what to set (MLflow's file store is no fallback).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from core.config import ConfigError, flatten

__all__ = [
    "ManifestRecord",
    "MetricBuffer",
    "Terminated",
    "closed_on_exit",
    "dataset_input",
    "experiment_id",
    "finish_run",
    "git_commit",
    "git_env",
    "mask_credentials",
    "open_run",
    "param_value",
    "resolve_tracking_uri",
    "server_reachable",
    "sigterm_raises",
    "source_fingerprint",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = [
    "core", "models", "datagen", "tracking", "training", "evaluation", "registry", "pipelines",
    "orchestration", "vos",
]  # fmt: skip
RUN_NAME_TAG = "vos.run_name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "vos.git_dirty"
UNKNOWN_COMMIT = "unknown"
# where `vos stack up` keeps its state (vos/stack.py: $VOS_STACK_ROOT, else .vos/stack)
STACK_ROOT_ENV = "VOS_STACK_ROOT"
DEFAULT_STACK_ROOT = Path(".vos/stack")
DATASET_DIGEST_LENGTH = 16  # MLflow keeps at most 36 characters; profiles hold the full hash


# -- where runs are tracked -------------------------------------------------------------------


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else the local stack's server when it is up.

    A plain path becomes an absolute file URI (so that workers in other folders agree). With
    none of these, raises `ConfigError` saying what to set.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or local_stack_tracking_uri()
    if not uri:
        raise ConfigError(
            "config error: no MLflow tracking server: set MLFLOW_TRACKING_URI (or tracking.uri "
            "in the config), or start the local stack with `vos stack up`"
        )
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def local_stack_tracking_uri() -> str | None:
    """The MLflow server of the local stack (its `stack.json`), if one answers."""
    root = Path(os.environ.get(STACK_ROOT_ENV) or DEFAULT_STACK_ROOT)
    try:
        port = json.loads((root / "stack.json").read_text())["ports"]["mlflow"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    uri = f"http://127.0.0.1:{port}"
    return uri if server_reachable(uri, timeout=3) else None


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@]+)@")


def mask_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it replaced by `***`
    (a user part alone, often a token, is masked whole)."""

    def masked(match: re.Match) -> str:
        user, sep, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:***@" if sep else f"{match['scheme']}***@"

    return _USERINFO.sub(masked, text)


def server_reachable(tracking_uri: str, timeout: float = 10.0) -> bool:
    """An HTTP tracking server answers its health check, with the credentials MLflow would send
    (those in the URI, else MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN).
    Other stores are not checked."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((parts.scheme, host, f"{parts.path.rstrip('/')}/health", "", ""))
    request = urllib.request.Request(url)
    authorization = _authorization(parts)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _authorization(parts: urllib.parse.SplitResult) -> str | None:
    username = urllib.parse.unquote(parts.username or "") or os.environ.get(
        "MLFLOW_TRACKING_USERNAME"
    )
    password = urllib.parse.unquote(parts.password or "") or os.environ.get(
        "MLFLOW_TRACKING_PASSWORD", ""
    )
    if username:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created when missing (also when another process races)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def param_value(value: Any) -> str:
    """`value` as an MLflow param: a string within MLflow's length limit."""
    text = str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    return text[: MAX_PARAM_VAL_LENGTH - 3] + "..."


# -- what code ran ----------------------------------------------------------------------------


def git_commit(repo_root: Path = REPO_ROOT) -> tuple[str, bool | None]:
    """(commit, dirty) of the code: from git when `repo_root` is a checkout, else from
    $VOS_GIT_COMMIT / $VOS_GIT_DIRTY (set by whoever submitted the job); ("unknown", None)
    when neither says. `dirty`: tracked files differ from the commit."""
    if (repo_root / ".git").exists():
        try:
            commit = _git(repo_root, "rev-parse", "HEAD")
            dirty = bool(_git(repo_root, "status", "--porcelain", "--untracked-files=no"))
            return commit, dirty
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
    commit = os.environ.get("VOS_GIT_COMMIT", "").strip()
    dirty_env = os.environ.get("VOS_GIT_DIRTY", "").strip().lower()
    if commit.endswith("-dirty"):  # the older `<sha>-dirty` form
        commit, dirty_env = commit.removesuffix("-dirty"), "true"
    if not commit or commit == UNKNOWN_COMMIT:
        return UNKNOWN_COMMIT, None
    return commit, {"true": True, "false": False}.get(dirty_env)


def git_env(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """VOS_GIT_COMMIT and VOS_GIT_DIRTY of this code, for the env of a job it submits (empty
    when the commit is unknown)."""
    commit, dirty = git_commit(repo_root)
    if commit == UNKNOWN_COMMIT:
        return {}
    env = {"VOS_GIT_COMMIT": commit}
    if dirty is not None:
        env["VOS_GIT_DIRTY"] = "true" if dirty else "false"
    return env


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


# -- what data was read -----------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRecord:
    """One shard set as the run records it: its manifest's URL, sha256 and clip count, and,
    when the reader passes them, the set's kind and the generator config it was made with."""

    url: str
    sha256: str
    clips: int
    kind: str | None = None
    generator: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The shard set's folder name (`.../shards/davis/manifest.json` -> `davis`)."""
        parts = [part for part in self.url.rstrip("/").split("/") if part]
        if len(parts) > 1 and parts[-1].endswith(".json"):
            parts.pop()
        return parts[-1] if parts else "shards"

    def profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = {"clips": self.clips, "sha256": self.sha256}
        if self.kind is not None:
            profile["kind"] = self.kind
        if self.generator is not None:
            profile["generator"] = self.generator
        return profile


class _ProfiledDataset(MetaDataset):
    """MLflow's metadata-only dataset, with a profile (MetaDataset itself carries none)."""

    def __init__(self, source, name: str, digest: str, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, sort_keys=True)}


def dataset_input(
    url: str, name: str, digest: str, profile: dict[str, Any], context: str
) -> DatasetInput:
    """An MLflow dataset input for data at `url` (local path, file:// or s3://): the data stays
    where it is; MLflow records its source, name, digest and profile, and the `context` in
    which the run used it (`training`, `evaluation`)."""
    with warnings.catch_warnings():  # a local path matches MLflow's local source twice
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(url)
    dataset = _ProfiledDataset(source, name, digest[:DATASET_DIGEST_LENGTH], profile)
    return DatasetInput(
        dataset=dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]
    )


def training_inputs(manifests: list[ManifestRecord]) -> list[DatasetInput]:
    return [
        dataset_input(m.url, m.name, m.sha256, m.profile(), context="training") for m in manifests
    ]


# -- training runs ----------------------------------------------------------------------------


def run_tags(run_name: str, stage: str, manifests: list[ManifestRecord]) -> dict[str, str]:
    commit, dirty = git_commit()
    tags = {
        RUN_NAME_TAG: run_name,
        "vos.stage": stage,
        "mlflow.runName": run_name,
        GIT_COMMIT_TAG: commit,
        "vos.source_sha256": source_fingerprint(),
    }
    if dirty is not None:
        tags[GIT_DIRTY_TAG] = "true" if dirty else "false"
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

    Logs the flattened config as params, the tags of `run_tags`, the shard sets as dataset
    inputs, the config file and the resolved config (config/resolved.json). MLflow params
    cannot change, so a rerun logs only new keys and records a changed value as a
    `config.changed.<key>` tag.
    """
    client = MlflowClient(tracking_uri)
    run, resumed = _find_or_create_run(client, experiment_id(client, experiment), run_name)
    run_id = run.info.run_id
    params = {key: param_value(value) for key, value in flatten(config).items()}
    logged = run.data.params
    tags = run_tags(run_name, config.stage, manifests)
    tags.update(
        {
            f"config.changed.{key}": value
            for key, value in params.items()
            if logged.get(key, value) != value
        }
    )
    client.log_batch(
        run_id,
        params=[Param(key, value) for key, value in params.items() if key not in logged],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    if manifests:
        client.log_inputs(run_id, datasets=training_inputs(manifests))
    if config_file is not None:
        client.log_artifact(run_id, str(config_file), artifact_path="config")
    client.log_text(run_id, config.model_dump_json(indent=2), "config/resolved.json")
    return run_id, resumed


def _find_or_create_run(client: MlflowClient, experiment_id: str, run_name: str):
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0], True
    return client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name}), False


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


class Terminated(SystemExit):
    """SIGTERM arrived while a run was open; exits with status 143 once the run is closed."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


@contextmanager
def closed_on_exit(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Leave no run RUNNING when the block does not end normally: KILLED after SIGTERM (which
    raises `Terminated` in the main thread meanwhile) or Ctrl-C, FAILED after an error. A block
    that ends normally closes the run itself (with the status it decides)."""
    with sigterm_raises():
        try:
            yield
        except (Terminated, KeyboardInterrupt):
            client.set_terminated(run_id, "KILLED")
            raise
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the block, so that `finally` clauses
    and context managers (an open run, a held lease) are unwound before the process exits."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; its own handler decides
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class MetricBuffer:
    """Per-step metrics of rank 0, sent to MLflow in batches (MLflow splits a flush into
    requests within its limits).

    `flush(wait=False)` sends in the background (MLflow's async logging) so that training does
    not wait for the server; the next flush waits for it first, so at most one is in flight.
    The last flush must wait (the default): a Ray Train worker is killed, not exited, when its
    loop returns, so nothing still queued would reach MLflow.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[Metric] = []
        self.in_flight = None  # mlflow RunOperations of a background flush

    def add(self, step: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.pending += [
            Metric(key, float(value), timestamp, step) for key, value in metrics.items()
        ]

    def flush(self, wait: bool = True) -> None:
        if self.in_flight is not None:
            self.in_flight.wait()
            self.in_flight = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        operations = self.client.log_batch(self.run_id, metrics=batch, synchronous=wait)
        self.in_flight = None if wait else operations


def run_id_by_name(tracking_uri: str, run_name: str) -> str:
    """The MLflow run id of the training run called `run_name` (in any experiment)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        max_results=1,
    )
    if not runs:
        raise LookupError(f"run {run_name} is not in MLflow at {mask_credentials(tracking_uri)}")
    return runs[0].info.run_id
