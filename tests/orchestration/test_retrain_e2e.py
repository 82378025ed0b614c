"""Scheduled retraining end to end on tiny data, against a `ray start --head` cluster (Jobs
API), a real MLflow server and an S3 endpoint on 127.0.0.1.

A champion exists; new sequences (and one corrupt sequence) arrive on S3. Two triggers race:
one trains, the other exits. Generation, fine-tuning and evaluation with promotion each ran as
a Ray job; the training run records the commit it was submitted from. The new version is
registered with a promotion decision, the corrupt sequence is quarantined, and a later run
finds nothing new and does nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import s3fs
import yaml
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from datagen.procedural import write_procedural_videos
from evaluation.runner import EvaluationSettings
from orchestration.ledger import Ledger
from pipelines import promote
from registry import versions
from tracking.model_store import log_model

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAME_SIZE = (96, 64)


@pytest.fixture(scope="module")
def evaluation_set(tmp_path_factory) -> Path:
    return write_procedural_videos(
        tmp_path_factory.mktemp("eval-set"), n_sequences=2, n_frames=6, seed=99, size=FRAME_SIZE
    )


def evaluation_settings(evaluation_set: Path, out: Path) -> EvaluationSettings:
    return EvaluationSettings(data=str(evaluation_set), out=str(out), device="cpu")


def make_champion(mlflow_server, evaluation_set: Path, out: Path) -> str:
    """A gc-vos version (a freshly initialised tiny net), evaluated and made the champion.

    Forced: other tests on the same server may already have crowned a better gc-vos."""
    from models import build_model

    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("retrain-test")
    with mlflow.start_run(run_name="seed-champion") as run:
        log_model(build_model("gc", size="tiny"))
    client = MlflowClient(mlflow_server.uri)
    version = versions.register_run_model(client, run.info.run_id, model="gc")
    decision = promote.run(
        promote.PromoteConfig(
            model="gc-vos",
            version=str(version.version),
            evaluation=evaluation_settings(evaluation_set, out),
            force=True,
            reason="the champion the retraining cycle has to beat",
        )
    )
    assert decision.moves_champion, decision
    return str(version.version)


def upload_incoming(tmp_path: Path, bucket: str) -> str:
    """Two good procedural sequences and one whose frame is corrupt, under s3://bucket/incoming."""
    local = write_procedural_videos(
        tmp_path / "incoming", n_sequences=3, n_frames=8, seed=5, size=FRAME_SIZE
    )
    corrupt = local / "JPEGImages" / "480p" / "seq002" / "00003.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated JPEG
    fs = s3fs.S3FileSystem()
    fs.put(str(local) + "/", f"{bucket}/incoming/", recursive=True)
    return f"s3://{bucket}/incoming"


def write_config(tmp_path: Path, bucket: str, incoming: str, evaluation_set: Path) -> Path:
    config = {
        "model": "gc",
        "state_url": f"s3://{bucket}/retrain",
        "incoming": {"url": incoming, "layout": "davis"},
        "clips": {"size": 64, "clips_per_source": 4, "clips_per_shard": 4, "max_skip": 3},
        "finetune": {
            "config": "configs/finetune_tiny.yaml",
            "overrides": [
                "compute.num_workers=1",
                "data.loader_workers=0",
                "data.batch_size=2",
                "train.epochs=1",
                "train.max_steps=2",
                "tracking.experiment=retrain-test",
            ],
        },
        "jobs": {"working_dir": str(REPO_ROOT), "timeout_s": 600, "poll_s": 1},
        "evaluation": {"data": str(evaluation_set), "out": str(tmp_path / "eval"), "device": "cpu"},
        "margin": 0.0,
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def is_a_commit_of_this_checkout(commit: str) -> bool:
    """A full commit hash, HEAD or an ancestor (HEAD may move on while the test runs)."""
    ancestor = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "merge-base", "--is-ancestor", commit, "HEAD"]
    )
    return len(commit) == 40 and ancestor.returncode == 0


def vos_retrain(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vos.cli", "retrain", "--once", "--config", str(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_retraining_cycle_end_to_end(
    ray_cluster, mlflow_server, s3_endpoint, evaluation_set, tmp_path
):
    bucket = s3_endpoint.make_bucket("retrain-e2e").removeprefix("s3://")
    champion_version = make_champion(mlflow_server, evaluation_set, tmp_path / "eval-champion")
    incoming = upload_incoming(tmp_path, bucket)
    config = write_config(tmp_path, bucket, incoming, evaluation_set)

    # Two triggers at once: exactly one trains.
    first, second = vos_retrain(config), vos_retrain(config)
    outputs = [process.communicate(timeout=900)[0] for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], "\n".join(outputs)
    assert sum("already running" in output for output in outputs) == 1, "\n".join(outputs)
    assert sum("cycle" in output and "done" in output for output in outputs) == 1, "\n".join(
        outputs
    )

    ledger = Ledger(f"s3://{bucket}/retrain/ledger.json")
    assert len(ledger.cycles) == 1
    cycle = ledger.cycles[0]
    assert cycle.status == "done"
    assert cycle.sequences == ["seq000", "seq001"]
    assert ledger.sequences["seq002"]["status"] == "quarantined"
    assert "corrupt image" in ledger.sequences["seq002"]["reason"]
    assert {ledger.sequences[name]["status"] for name in cycle.sequences} == {"trained"}

    # every step that needs Ray went through the Jobs API, under the cycle's job ids
    jobs = JobSubmissionClient(ray_cluster.dashboard_url)
    for step in ("generate", "finetune", "promote"):
        job_id = cycle.steps[step]["job_id"]
        assert job_id == f"retrain-{cycle.id}-{step}"
        info = jobs.get_job_info(job_id)
        assert info.status == JobStatus.SUCCEEDED
        assert info.entrypoint.startswith(f"python pipelines/{step}.py ")
        assert is_a_commit_of_this_checkout(info.runtime_env["env_vars"]["VOS_GIT_COMMIT"])
    assert cycle.steps["generate"]["clips"] > 0

    client = MlflowClient(mlflow_server.uri)
    new_version = cycle.steps["register"]["version"]
    assert int(new_version) == int(champion_version) + 1
    tags = client.get_model_version("gc-vos", new_version).tags
    assert tags["promotion.outcome"] == cycle.steps["promote"]["outcome"]
    assert tags["promotion.outcome"] in ("promoted", "kept")
    training_run = client.get_run(cycle.steps["finetune"]["run_id"])
    assert training_run.data.tags["vos.run_name"] == f"retrain-{cycle.id}"
    # the job's upload has no .git: the commit came with the job
    finetune_job = jobs.get_job_info(cycle.steps["finetune"]["job_id"])
    commit = finetune_job.runtime_env["env_vars"]["VOS_GIT_COMMIT"]
    assert training_run.data.tags["mlflow.source.git.commit"] == commit
    assert tags["vos.git_commit"] == training_run.data.tags["mlflow.source.git.commit"]
    [shards] = training_run.inputs.dataset_inputs
    assert shards.dataset.source_type == "s3" and cycle.id in shards.dataset.source
    assert cycle.steps["promote"]["reason"].startswith(
        f"on {cycle.steps['promote']['evaluation_set']}"
    )
    assert json.loads(json.dumps(cycle.steps["promote"]))["version"] == new_version

    # A later trigger finds nothing new and does nothing.
    again = vos_retrain(config)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert "no new sequences" in output
    assert len(Ledger(f"s3://{bucket}/retrain/ledger.json").cycles) == 1
    versions = client.search_model_versions("name = 'gc-vos'")
    assert max(int(v.version) for v in versions) == int(new_version)
