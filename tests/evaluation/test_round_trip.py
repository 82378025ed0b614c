"""A model's whole life: train a few steps, register, evaluate, promote, load by alias, segment.

Through the real stages (pipelines/generate.py, pretrain.py, promote.py, evaluate.py,
segment.py) on the real Ray cluster and MLflow server of the test fixtures.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from core.config import load_config
from core.masks import read_mask
from evaluation.runner import EvaluationSettings, dataset_fingerprint
from pipelines import generate, promote, segment
from registry import versions
from registry.versions import CHALLENGER, CHAMPION
from tracking.model_store import load_model
from training.config import PretrainConfig
from training.driver import run_training


@pytest.mark.slow
def test_train_register_evaluate_promote_load_and_segment(
    ray_cluster, mlflow_server, davis_subset, tmp_path
):
    shards = tmp_path / "shards"
    generate.run(
        load_config(
            generate.GenerateConfig,
            "configs/generate_demo.yaml",
            ["source.procedural.count=8", f"output.url={shards}", "clips.clips_per_shard=4"],
        )
    )
    trained = run_training(
        load_config(
            PretrainConfig,
            "configs/pretrain_tiny.yaml",
            [
                f"data.manifests=[{shards}/manifest.json]",
                "train.max_steps=2",
                "compute.num_workers=1",
                "data.batch_size=2",
                "data.loader_workers=0",
                f"run.storage_path={tmp_path / 'runs'}",
                "tracking.experiment=evaluation-round-trip",
            ],
        )
    )

    name = f"gc-vos-round-trip-{uuid.uuid4().hex[:6]}"
    evaluation = EvaluationSettings(
        data=str(davis_subset),
        sequences=["blackswan"],
        resolution="64p",
        device="cpu",
        threads=1,
        out=str(tmp_path / "eval"),
    )
    decision = promote.run(
        promote.PromoteConfig(run_id=trained.mlflow_run_id, model=name, evaluation=evaluation)
    )
    assert decision.outcome == "promoted", decision.reason  # the first evaluated version

    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version_by_alias(name, CHAMPION)
    assert CHALLENGER not in client.get_registered_model(name).aliases
    set_name = versions.evaluation_set_name(str(davis_subset), dataset_fingerprint(evaluation))
    assert version.tags[f"eval.{set_name}.status"] == "complete"
    assert version.run_id == trained.mlflow_run_id
    assert client.get_run(trained.mlflow_run_id).inputs.dataset_inputs  # the shards it saw
    assert version.tags["vos.git_commit"]
    eval_run = client.get_run(version.tags[f"eval.{set_name}.run_id"])
    assert eval_run.data.tags["mlflow.parentRunId"] == trained.mlflow_run_id

    champion = load_model(f"models:/{name}@{CHAMPION}")
    checkpoint = load_model(trained.checkpoint)
    assert type(champion) is type(checkpoint)
    for key, value in checkpoint.state_dict().items():
        assert torch.equal(champion.state_dict()[key], value), key

    out = tmp_path / "segmented"
    frames = davis_subset / "JPEGImages" / "480p" / "car-shadow"
    mask = davis_subset / "Annotations" / "480p" / "car-shadow" / "00000.png"
    argv = ["--model", f"models:/{name}@{CHAMPION}", "--frames", str(frames), "--mask", str(mask)]
    assert segment.main([*argv, "--out", str(out), "resolution=64p", "device=cpu"]) == 0
    written = sorted(out.glob("*.png"))
    assert [path.stem for path in written] == sorted(path.stem for path in frames.glob("*.jpg"))
    assert all(read_mask(path).shape == (480, 854) for path in written)
    assert np.array_equal(read_mask(written[0]), read_mask(mask))
