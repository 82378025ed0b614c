"""tracking.model_store: every place a model lives gives back the project's own model class."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models import VOSNetwork, build_model
from tracking import model_store


def tiny_net(name: str = "gc", seed: int = 0) -> VOSNetwork:
    torch.manual_seed(seed)
    return build_model(name, size="tiny")


def assert_same_model(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    assert type(loaded) is type(original)
    assert loaded.config == original.config
    assert not loaded.training
    expected = original.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", ["gc", "gvos_scm", "stm"])
def test_a_pt_file_and_a_checkpoint_folder_load_back(tmp_path, name):
    net = tiny_net(name)
    model_store.save_model(net, tmp_path / "model.pt")
    assert_same_model(model_store.load_model(tmp_path / "model.pt"), net)
    folder = tmp_path / "checkpoint"
    model_store.save_model(net, folder)
    assert_same_model(model_store.load_model(folder), net)


def test_a_model_saved_before_the_other_objects_channel_still_loads(tmp_path):
    """A model.pt written before `other_objects_mask` and `train_size` existed: its config
    lacks both, and it holds a 4-channel memory encoder."""
    net = build_model("gc", size="tiny", other_objects_mask=False)
    config = {k: v for k, v in net.config.items() if k not in ("other_objects_mask", "train_size")}
    payload = {"format": model_store.FORMAT, "config": config, "state_dict": net.state_dict()}
    torch.save(payload, tmp_path / "old.pt")
    loaded = model_store.load_model(tmp_path / "old.pt")
    assert loaded.memory_encoder.stem[0].in_channels == 4
    assert_same_model(loaded, net)


def test_a_model_on_s3_loads_back(s3_endpoint):
    bucket = s3_endpoint.make_bucket("model-io")
    net = tiny_net(seed=3)
    url = model_store.save_model(net, f"{bucket}/runs/r1/checkpoint-step-000000010")
    assert url == f"{bucket}/runs/r1/checkpoint-step-000000010/model.pt"
    assert_same_model(model_store.load_model(f"{bucket}/runs/r1/checkpoint-step-000000010"), net)


def test_bad_places_fail_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        model_store.load_model(tmp_path / "nothing-here")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a readable model file") as raised:
        model_store.load_model(junk)
    assert len(str(raised.value).splitlines()) == 1
    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match="not a vos-model/1 file written by save_model"):
        model_store.load_model(junk)


def test_a_logged_model_loads_back_by_every_uri(mlflow_server, tmp_path):
    net = tiny_net("stm", seed=5)
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("test-model-io")
    with mlflow.start_run() as run:
        model_uri = model_store.log_model(net, registered_model_name="test-model-io-stm")
    client = MlflowClient(mlflow_server.uri)
    version = max(
        int(v.version) for v in client.search_model_versions("name = 'test-model-io-stm'")
    )
    client.set_registered_model_alias("test-model-io-stm", "champion", version)

    for uri in (
        model_uri,
        f"runs:/{run.info.run_id}/model",
        f"models:/test-model-io-stm/{version}",
        "models:/test-model-io-stm@champion",
    ):
        assert_same_model(model_store.load_model(uri), net)
        # load_model fetches the weights file alone, not the model's code and environment
        weights = mlflow.artifacts.download_artifacts(
            model_store._weights_uri(uri), dst_path=str(tmp_path / uri.split(":")[0])
        )
        assert Path(weights).name == model_store.MODEL_FILE and Path(weights).is_file()

    info = mlflow.models.get_model_info("models:/test-model-io-stm@champion")
    assert info.signature is not None
    assert [spec.name for spec in info.signature.inputs.inputs] == ["frames", "first_labels"]
    assert info.metadata["vos_config"] == net.config


def test_the_pyfunc_model_segments_a_video(mlflow_server):
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("test-model-io")
    with mlflow.start_run():
        model_uri = model_store.log_model(tiny_net("gc"))
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    first_labels = np.zeros((64, 64), dtype=np.uint8)
    first_labels[20:40, 20:40] = 1
    output = mlflow.pyfunc.load_model(model_uri).predict(
        {"frames": frames, "first_labels": first_labels}
    )
    labels = output["labels"]
    assert labels.shape == (3, 64, 64) and labels.dtype == np.uint8
    assert np.array_equal(labels[0], first_labels)
    assert set(np.unique(labels)) <= {0, 1}
