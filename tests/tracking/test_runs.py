"""What a training run records in MLflow (commit, dirtiness, its shard sets as datasets), where
runs are tracked when nothing is configured, and tracking URIs with credentials: on the real
MLflow server of the test stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from core.config import ConfigError, load_config
from tracking import runs
from training.config import PretrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def shard_set(url: str, clips: int) -> runs.ManifestRecord:
    return runs.ManifestRecord(
        url=url,
        sha256=f"{clips:02d}" * 32,
        clips=clips,
        kind="video",
        generator={"source": {"kind": "davis"}, "clips": {"size": 64}},
    )


def test_a_training_run_records_its_commit_and_its_shard_sets_as_datasets(mlflow_server):
    manifests = [
        shard_set("s3://vos/shards/davis/manifest.json", 36),
        shard_set("/data/shards/replay/manifest.json", 12),
    ]
    config = load_config(PretrainConfig, REPO_ROOT / "configs" / "pretrain_tiny.yaml")
    run_name = f"records-{uuid.uuid4().hex[:8]}"
    experiment = f"tracking-{run_name}"
    run_id, resumed = runs.open_run(mlflow_server.uri, experiment, run_name, config, manifests)
    again, resumed = runs.open_run(mlflow_server.uri, experiment, run_name, config, manifests)
    assert again == run_id and resumed

    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    commit = run.data.tags["mlflow.source.git.commit"]
    assert commit == git("rev-parse", "HEAD") and len(commit) == 40
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    assert run.data.tags["vos.git_dirty"] == ("true" if dirty else "false")

    inputs = {item.dataset.name: item for item in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["davis", "replay"]  # a rerun logs no second copy
    davis = inputs["davis"]
    assert davis.dataset.source_type == "s3"
    assert "s3://vos/shards/davis/manifest.json" in davis.dataset.source
    assert davis.dataset.digest == "36" * 8  # the manifest's sha256, shortened for MLflow
    profile = json.loads(davis.dataset.profile)
    assert profile["clips"] == 36 and profile["sha256"] == "36" * 32
    assert profile["generator"]["clips"]["size"] == 64
    assert {(tag.key, tag.value) for tag in davis.tags} == {("mlflow.data.context", "training")}
    assert inputs["replay"].dataset.source_type == "local"


def test_a_job_upload_without_git_records_the_commit_its_submitter_passed(tmp_path, monkeypatch):
    upload = tmp_path / "working_dir"  # what `ray job submit --working-dir .` unpacks: no .git
    upload.mkdir()
    env = runs.git_env(REPO_ROOT)  # what vos/demo.py and orchestration/retrain.py pass on
    assert env["VOS_GIT_COMMIT"] == git("rev-parse", "HEAD")
    assert env["VOS_GIT_DIRTY"] in ("true", "false")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert runs.git_commit(upload) == (env["VOS_GIT_COMMIT"], env["VOS_GIT_DIRTY"] == "true")

    monkeypatch.delenv("VOS_GIT_COMMIT")
    monkeypatch.delenv("VOS_GIT_DIRTY")
    assert runs.git_commit(upload) == ("unknown", None)
    assert runs.git_env(upload) == {}


def test_a_uri_with_credentials_reaches_the_server_and_is_never_printed(mlflow_server):
    host = mlflow_server.uri.removeprefix("http://")
    uri = f"http://alice:s3cr3t@{host}"
    assert runs.server_reachable(uri)  # the credentials go in a header, not in the host
    MlflowClient(uri).search_experiments(max_results=1)  # as MLflow itself reaches it

    assert runs.mask_credentials(f"server {uri} down") == f"server http://alice:***@{host} down"
    assert runs.mask_credentials("https://t0ken@example.org/x") == "https://***@example.org/x"
    with pytest.raises(LookupError) as err:
        runs.run_id_by_name(uri, "no-such-run")
    assert "alice:***@" in str(err.value) and "s3cr3t" not in str(err.value)
    assert not runs.server_reachable("http://alice:s3cr3t@127.0.0.1:1", timeout=2)


def test_without_a_tracking_uri_the_local_stack_is_used_or_one_line_says_what_to_set(
    mlflow_server, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VOS_STACK_ROOT", str(mlflow_server.root))  # `vos stack up` state
    assert runs.resolve_tracking_uri(None) == mlflow_server.uri
    assert runs.resolve_tracking_uri("http://elsewhere:5000") == "http://elsewhere:5000"

    monkeypatch.setenv("VOS_STACK_ROOT", str(tmp_path / "no-stack"))
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_URI"):
        runs.resolve_tracking_uri(None)

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "pipelines/pretrain.py", "--config", "configs/pretrain_tiny.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "MLFLOW_TRACKING_URI" in lines[0], result.stderr[-3000:]


def test_step_metrics_go_out_in_the_background_and_the_last_flush_waits(mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment_id = runs.experiment_id(client, "tracking-metric-buffer")
    assert runs.experiment_id(client, "tracking-metric-buffer") == experiment_id
    run_id = client.create_run(experiment_id).info.run_id
    buffer = runs.MetricBuffer(mlflow_server.uri, run_id)
    for step in range(1200):  # more than one MLflow request holds: MLflow splits them
        buffer.add(step, {"train/loss": 1.0 / (step + 1)})
    buffer.flush(wait=False)
    buffer.add(1200, {"train/loss": 0.0})
    buffer.flush()
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(metric.step for metric in history) == list(range(1201))
