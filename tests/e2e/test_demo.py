"""The demo flow end to end: `ray job submit` of pretraining and fine-tuning to a cluster started
with `ray start --head`, a real MLflow server, shards and runs on an S3 endpoint on 127.0.0.1.
It must end with a registered model holding the `champion` alias and masks for a sequence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import s3fs
from mlflow.tracking import MlflowClient
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_end_to_end_on_s3(ray_cluster, mlflow_server, s3_endpoint, tmp_path):
    bucket = s3_endpoint.make_bucket("demo-e2e")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable, "-m", "vos.cli", "demo", "--quick",
            "--workdir", str(workdir),
            "--storage", f"{bucket}/demo",
            "--davis", str(tmp_path / "no-davis-here"),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "demo: where to look" in output
    assert "Job 'raysubmit_" in output and "succeeded" in output

    # Shards and training runs went to S3, each shard set finished with its manifest.
    fs = s3fs.S3FileSystem()
    for split in ("pretrain", "finetune"):
        assert fs.exists(f"{bucket}/demo/shards/{split}/manifest.json")
        assert fs.glob(f"{bucket}/demo/shards/{split}/shard-*.tar")
    assert fs.glob(f"{bucket}/demo/runs/demo-finetune-*/checkpoint_*")

    # The registry holds a champion, and the demo's version carries its promotion decision.
    client = MlflowClient(mlflow_server.uri)
    champion = client.get_model_version_by_alias("gc-vos", "champion")
    demo_runs = client.search_runs(
        [client.get_experiment_by_name("vos-demo").experiment_id],
        filter_string="tags.`vos.run_name` LIKE 'demo-finetune-%'",
    )
    assert len(demo_runs) == 1
    demo_versions = client.search_model_versions(f"run_id = '{demo_runs[0].info.run_id}'")
    assert len(demo_versions) == 1
    decision = demo_versions[0].tags["promotion.outcome"]
    assert decision in ("promoted", "kept")
    if decision == "promoted":
        assert champion.version == demo_versions[0].version

    # Masks for one sequence: one palette PNG per frame, the frames' size, and an overlay.
    frames = sorted((workdir / "data" / "eval" / "JPEGImages" / "480p" / "seq000").glob("*.jpg"))
    masks = sorted((workdir / "segment" / "seq000").glob("*.png"))
    assert [m.stem for m in masks] == [f.stem for f in frames]
    assert Image.open(masks[-1]).size == Image.open(frames[-1]).size
    assert (workdir / "segment" / "seq000.gif").stat().st_size > 0
