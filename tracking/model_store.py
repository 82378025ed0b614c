"""Saving, loading and logging models so that they always come back as the project's own class.

A saved model is one file, `model.pt`, holding the architecture config and the weights:

    {"format": "vos-model/1", "config": net.config, "state_dict": net.state_dict()}

`build_model(**config)` rebuilds the network and `load_state_dict` fills it, so a model
survives refactors of the code that pickling a whole module would not, and loading it
runs no pickled code (`torch.load(weights_only=True)`).

`load_model(uri)` accepts every place a model lives in this project:

    models:/gc-vos@champion      a registered model by alias (MLflow registry)
    models:/gc-vos/3             a registered model by version
    runs:/<run_id>/model         the model logged by a training run
    models:/m-<id>               a logged model by id (what `log_model` returns)
    <dir or URL>                 a Ray Train checkpoint folder (local, file://, s3://)
    <path or URL>.pt             a file written by `save_model`

`log_model(net)` logs an MLflow pyfunc model whose artifact is that same `model.pt`, with an
explicit signature (a video and its first-frame mask in, the label map of every frame out),
so the registry can serve it generically while `load_model` returns the torch module.
"""

from __future__ import annotations

import io
import re
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from core import storage
from models import VideoSegmenter, build_model
from models.config import saved_config

__all__ = ["MODEL_FILE", "load_model", "log_model", "model_signature", "save_model"]

MODEL_FILE = "model.pt"
FORMAT = "vos-model/1"
PACKAGE_DIRS = ["models", "core", "tracking"]  # shipped with the pyfunc model for serving


def save_model(net: torch.nn.Module, path: str | Path) -> str:
    """Write `net` (its config and weights) to `path` (a .pt path/URL or a folder/URL)."""
    url = str(path)
    if not url.endswith(".pt"):
        url = storage.join(url, MODEL_FILE)
    state_dict = {key: value.detach().cpu() for key, value in net.state_dict().items()}
    payload = {"format": FORMAT, "config": dict(net.config), "state_dict": state_dict}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes_atomic(url, buffer.getvalue())
    return url


def load_model(uri: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model from any of the places listed in the module docstring, in eval mode."""
    uri = str(uri)
    if uri.startswith(("models:/", "runs:/")):
        return _load_from_mlflow(uri, device)
    model_url = uri if uri.endswith(".pt") else storage.join(uri, MODEL_FILE)
    if not storage.exists(model_url):
        raise FileNotFoundError(f"load_model: no model file at {model_url} (from {uri!r})")
    return _from_bytes(storage.read_bytes(model_url), device, where=model_url)


def _from_bytes(data: bytes, device: str | torch.device, where: str) -> torch.nn.Module:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"load_model: {where} is not a readable model file ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"load_model: {where} is not a {FORMAT} file written by save_model")
    net = build_model(**saved_config(payload["config"]))
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval()


def _load_from_mlflow(uri: str, device: str | torch.device) -> torch.nn.Module:
    with tempfile.TemporaryDirectory(prefix="vos-model-") as tmp:
        try:  # the weights file only, not the whole pyfunc folder (code, environment files)
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=_weights_uri(uri), dst_path=tmp)
            )
        except (MlflowException, OSError):  # logged another way: look through the whole model
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        found = sorted(local.rglob(MODEL_FILE)) if local.is_dir() else [local]
        if not found:
            raise FileNotFoundError(
                f"load_model: {uri} holds no {MODEL_FILE}; was it logged with "
                "tracking.model_store.log_model?"
            )
        return _from_bytes(found[0].read_bytes(), device, where=uri)


def _weights_uri(uri: str) -> str:
    """Where `log_model` put `model.pt` inside the model at `uri`."""
    logged_model = re.fullmatch(r"models:/(m-[0-9a-f]+)/?", uri)
    if logged_model:  # a logged model's id: its files sit at its artifact location
        base = mlflow.get_logged_model(logged_model.group(1)).artifact_location
    else:  # registry and run URIs take a path inside the model
        base = uri.rstrip("/")
    return f"{base}/artifacts/{MODEL_FILE}"


def model_signature() -> ModelSignature:
    """Input: a video (uint8 [T, H, W, 3]) and its first-frame labels (uint8 [H, W]);
    output: the label map of every frame (uint8 [T, H, W])."""
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "frames"),
                TensorSpec(np.dtype(np.uint8), (-1, -1), "first_labels"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "labels")]),
    )


def example_input() -> dict[str, np.ndarray]:
    """A two-frame 32 x 32 video with one square object: what the pyfunc model takes."""
    frames = np.full((2, 32, 32, 3), 96, dtype=np.uint8)
    first_labels = np.zeros((32, 32), dtype=np.uint8)
    first_labels[8:24, 8:24] = 1
    frames[:, 8:24, 8:24] = (200, 60, 60)
    return {"frames": frames, "first_labels": first_labels}


def log_model(
    net: torch.nn.Module,
    name: str = "model",
    registered_model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Log `net` to the active MLflow run as a pyfunc model; returns its model URI.

    The model's artifact is the `model.pt` of `save_model`; `load_model` on the returned URI,
    on `runs:/<run_id>/<name>` or on a registered version gives back the project's class.
    """
    repo_root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="vos-log-model-") as tmp:
        model_path = save_model(net, Path(tmp) / MODEL_FILE)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"model": model_path},
            code_paths=[str(repo_root / package) for package in PACKAGE_DIRS],
            signature=model_signature(),
            input_example=example_input(),
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
            metadata={"vos_format": FORMAT, "vos_config": dict(net.config), **(metadata or {})},
        )
    return info.model_uri


def _pip_requirements() -> list[str]:
    """The runtime packages a served model needs, pinned to the versions that trained it."""
    requirements = []
    for package in ["torch", "torchvision", "kornia", "numpy", "pillow", "fsspec", "webdataset"]:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


class VideoSegmentationModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a logged model: segments one video from its first-frame labels."""

    # The input is a dict of two arrays, which MLflow's type-hint validation cannot express
    # (it warns on every import); the explicit `model_signature()` describes it instead.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.net = load_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        frames = np.asarray(model_input["frames"], dtype=np.uint8)
        first_labels = np.asarray(model_input["first_labels"])
        segmenter = VideoSegmenter(self.net, device="cpu")
        labels = [segmenter.step(frames[0], labels=first_labels).labels]
        labels += [segmenter.step(frame).labels for frame in frames[1:]]
        return {"labels": np.stack(labels).astype(np.uint8)}
