"""`vos evaluate` end to end: a registered tiny model on DAVIS frames, scores and MLflow records.

Real MLflow server (SQLite store) and, for the parallel path, a real Ray cluster.
"""

from __future__ import annotations

import json
import shutil
import uuid

import mlflow
import pytest
import s3fs
from mlflow.tracking import MlflowClient

from core.masks import read_mask
from evaluation.folders import score_folders
from evaluation.report import json_report
from evaluation.runner import dataset_fingerprint
from pipelines import evaluate, promote
from registry import versions

FAST = ["resolution=64p", "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    mlflow.set_tracking_uri(mlflow_server.uri)
    return MlflowClient(mlflow_server.uri)


def new_version(client, logged_run) -> tuple[str, str]:
    name = f"gc-vos-eval-{uuid.uuid4().hex[:8]}"
    version = versions.register_run_model(client, logged_run, model=name)
    return name, str(version.version)


def test_evaluates_a_registered_version_and_records_it(client, logged_run, davis_subset, tmp_path):
    name, version = new_version(client, logged_run)
    out, report_file = tmp_path / "eval", tmp_path / "report.json"
    argv = [
        "--model",
        f"models:/{name}/{version}",
        "--data",
        str(davis_subset),
        "--json",
        str(report_file),
    ]
    assert evaluate.main([*argv, *FAST, f"out={out}", "worst_frames=2"]) == 0

    report = json.loads(report_file.read_text())
    assert report["status"] == "complete"
    assert set(report["sequences"]) == {"blackswan", "car-shadow"}
    for key in ("J_mean", "F_mean", "JF_mean", "J_recall", "F_decay"):
        assert report[key] is not None
    assert 0 <= report["J_mean"] <= 1 and 0 <= report["F_mean"] <= 1
    assert report["fps"] > 0 and report["peak_memory_mb"] > 0 and report["state_mb"] > 0
    settings = evaluate.EvaluateConfig(model="x", data=str(davis_subset), resolution="64p")
    assert report["fingerprint"] == dataset_fingerprint(settings)

    # the masks written are full-size, named like the frames, and score the same through eval-masks
    masks = sorted((out / "masks" / "blackswan").glob("*.png"))
    assert len(masks) == 8 and read_mask(masks[3]).shape == (480, 854)
    rescored = json_report(score_folders(out / "masks", davis_subset))
    assert rescored["JF_mean"] == pytest.approx(report["JF_mean"])
    assert json.loads((out / "report.json").read_text())["JF_mean"] == report["JF_mean"]

    # the version carries the score under the set's name; the evaluation run is nested under
    # the training run, reads the set as a dataset, and scores the logged model on it
    set_name = versions.evaluation_set_name(str(davis_subset), report["fingerprint"])
    registered = client.get_model_version(name, version)
    tags = registered.tags
    assert tags[f"eval.{set_name}.status"] == "complete"
    assert float(tags[f"eval.{set_name}.JF_mean"]) == pytest.approx(report["JF_mean"])
    assert not [key for key in tags if key.startswith("eval.") and "report" in key]
    eval_run = client.get_run(tags[f"eval.{set_name}.run_id"])
    assert eval_run.info.status == "FINISHED"
    assert eval_run.data.tags["mlflow.parentRunId"] == logged_run
    assert eval_run.data.metrics["JF_mean"] == pytest.approx(report["JF_mean"])
    assert "blackswan.J" in eval_run.data.metrics
    [dataset_input] = eval_run.inputs.dataset_inputs
    assert dataset_input.dataset.name == set_name
    assert dataset_input.dataset.digest == report["fingerprint"]
    assert str(davis_subset) in dataset_input.dataset.source
    assert json.loads(dataset_input.dataset.profile)["sequences"] == ["blackswan", "car-shadow"]
    model_id = versions.model_id_of(registered)
    assert [item.model_id for item in eval_run.inputs.model_inputs] == [model_id]
    model_metrics = {metric.key: metric for metric in client.get_logged_model(model_id).metrics}
    assert model_metrics["JF_mean"].value == pytest.approx(report["JF_mean"])
    assert model_metrics["JF_mean"].dataset_name == set_name
    assert model_metrics["JF_mean"].dataset_digest == report["fingerprint"]
    assert model_metrics["JF_mean"].run_id == eval_run.info.run_id
    artifacts = {a.path for a in client.list_artifacts(eval_run.info.run_id, "evaluation")}
    assert {
        "evaluation/report.json",
        "evaluation/per_frame.json",
        "evaluation/table.txt",
    } <= artifacts
    assert len(client.list_artifacts(eval_run.info.run_id, "worst_frames")) == 2


def test_partial_evaluation_is_reported_and_never_promotes(
    client, logged_run, davis_subset, tmp_path
):
    name, first = new_version(client, logged_run)
    assert (
        evaluate.main(
            [
                "--model",
                f"models:/{name}/{first}",
                "--data",
                str(davis_subset),
                *FAST,
                f"out={tmp_path / 'a'}",
            ]
        )
        == 0
    )
    assert promote.main(["--model", name, "--version", first]) == 0
    assert client.get_model_version_by_alias(name, versions.CHAMPION).version == first

    broken = tmp_path / "broken"
    shutil.copytree(davis_subset, broken)
    (broken / "JPEGImages" / "480p" / "car-shadow" / "00004.jpg").write_bytes(b"\xff\xd8 cut short")
    name_version = versions.register_run_model(client, logged_run, model=name)
    second = str(name_version.version)
    report_file = tmp_path / "partial.json"
    argv = [
        "--model",
        f"models:/{name}/{second}",
        "--data",
        str(broken),
        "--json",
        str(report_file),
    ]
    assert evaluate.main([*argv, *FAST, f"out={tmp_path / 'b'}"]) == 1

    report = json.loads(report_file.read_text())
    assert report["status"] == "partial"
    assert report["sequences"]["blackswan"]["status"] == "complete"
    assert report["sequences"]["car-shadow"]["status"] == "failed"
    assert "00004.jpg" in report["sequences"]["car-shadow"]["error"]
    broken_set = versions.evaluation_set_name(str(broken), report["fingerprint"])
    assert client.get_model_version(name, second).tags[f"eval.{broken_set}.status"] == "partial"

    # decided on the challenger, on the broken set (the champion is evaluated on it first)
    on_broken = [f"evaluation.{key}" for key in [f"data={broken}", *FAST, f"out={tmp_path / 'c'}"]]
    assert promote.main(["--model", name, *on_broken]) == 0
    assert client.get_model_version_by_alias(name, versions.CHAMPION).version == first
    reason = client.get_model_version(name, second).tags["promotion.reason"]
    assert reason.startswith(f"on {broken_set}:") and "evaluation is partial" in reason


def test_a_model_that_does_not_load_is_a_failed_evaluation(davis_subset, tmp_path):
    report_file = tmp_path / "failed.json"
    argv = [
        "--model",
        str(tmp_path / "missing.pt"),
        "--data",
        str(davis_subset),
        "--json",
        str(report_file),
    ]
    assert evaluate.main([*argv, *FAST, f"out={tmp_path / 'out'}", "tracking.log=false"]) == 1
    report = json.loads(report_file.read_text())
    assert report["status"] == "failed" and "missing.pt" in report["error"]
    assert "JF_mean" not in report


def test_sequences_spread_over_ray_workers_from_a_set_on_s3(
    ray_cluster, s3_endpoint, tiny_model_file, davis_subset, tmp_path, monkeypatch
):
    bucket = s3_endpoint.make_bucket("evaluation-sets")
    s3fs.S3FileSystem().put(f"{davis_subset}/", f"{bucket}/davis-subset/", recursive=True)
    monkeypatch.setenv("VOS_CACHE", str(tmp_path / "cache"))  # forwarded to the Ray tasks
    common = ["--model", str(tiny_model_file)]
    settings = [*FAST, "tracking.log=false"]
    local_run = ["--data", str(davis_subset), "--json", str(tmp_path / "local.json")]
    assert evaluate.main([*common, *local_run, *settings, f"out={tmp_path / 'local'}"]) == 0
    ray_run = ["--data", f"{bucket}/davis-subset", "--json", str(tmp_path / "ray.json")]
    ray_settings = [*settings, "workers=2", f"out={tmp_path / 'ray'}"]
    assert evaluate.main([*common, *ray_run, *ray_settings]) == 0
    mirrored = list((tmp_path / "cache").rglob("*.png"))
    assert len(mirrored) == len(list(davis_subset.rglob("*.png")))
    local = json.loads((tmp_path / "local.json").read_text())
    spread = json.loads((tmp_path / "ray.json").read_text())
    assert spread["status"] == "complete"
    for sequence in ("blackswan", "car-shadow"):
        assert spread["sequences"][sequence]["J"] == pytest.approx(
            local["sequences"][sequence]["J"], abs=1e-6
        )
    assert len(list((tmp_path / "ray" / "masks" / "car-shadow").glob("*.png"))) == 8
