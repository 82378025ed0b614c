"""Fixtures of the evaluation tests: a small DAVIS folder, a tiny model file, a logged run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SUBSET_SEQUENCES = ("blackswan", "car-shadow")
SUBSET_FRAMES = 8


@pytest.fixture(scope="session")
def davis_subset(davis_root, tmp_path_factory) -> Path:
    """The first frames of two sequences of the DAVIS sample, in the DAVIS layout."""
    root = tmp_path_factory.mktemp("davis-subset")
    for sequence in SUBSET_SEQUENCES:
        for kind, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            source = davis_root / kind / "480p" / sequence
            target = root / kind / "480p" / sequence
            target.mkdir(parents=True)
            for path in sorted(source.glob(f"*{suffix}"))[:SUBSET_FRAMES]:
                shutil.copy(path, target / path.name)
    return root


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """An untrained tiny `gc` network saved with tracking.model_store.save_model."""
    from models import build_model
    from tracking.model_store import save_model

    path = tmp_path_factory.mktemp("tiny-model") / "tiny_gc.pt"
    save_model(build_model("gc", size="tiny", pretrained_backbone=False), path)
    return path


@pytest.fixture(scope="module")
def logged_run(mlflow_server) -> str:
    """A run shaped like a training run: config params and artifact, commit and manifest tags,
    and a tiny untrained model logged with tracking.model_store.log_model. One per test module:
    an evaluation records its scores on the training run, which a later module must not see."""
    import mlflow

    from models import build_model
    from tracking.model_store import log_model

    mlflow.set_tracking_uri(mlflow_server.uri)
    # not mlflow.set_experiment: that would stay the process's active experiment for later tests
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("evaluation-tests")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("evaluation-tests")
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params({"model.name": "gc", "model.size": "tiny", "train.lr": 0.001})
        mlflow.set_tags(
            {
                "mlflow.source.git.commit": "0123abcd",
                "vos.source_sha256": "f" * 64,
                "vos.run_name": "pretrain-test",
                "data.manifest.0.uri": "s3://data/shards/manifest.json",
                "data.manifest.0.sha256": "a" * 64,
            }
        )
        mlflow.log_text(
            json.dumps({"model": {"name": "gc", "size": "tiny"}}), "config/resolved.json"
        )
        log_model(build_model("gc", size="tiny", pretrained_backbone=False))
    return run.info.run_id
