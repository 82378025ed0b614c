"""The MLflow model registry as this project uses it: names, aliases and what a version carries.

One registered model per architecture (`gc-vos`, `gvos-scm-vos`, `stm-vos`). Versions are
found by alias, never by stage: `challenger` marks the newest candidate, `champion` the
model users get. A version carries, as tags:

    vos.config              the training config (JSON)            copied from the training run
    vos.git_commit          the code's commit                     copied from the training run
    vos.source_sha256       a hash of the code                    copied from the training run
    data.manifest.<i>.*     the data manifests' URIs and hashes   copied from the training run
    vos.signature           the logged model's signature (JSON)   read from the logged model
    eval.*                  the latest evaluation and its report  written by pipelines/evaluate.py
    promotion.*             every promotion decision              written by pipelines/promote.py
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking import runs
from training.config import REGISTERED_MODEL_NAMES

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EVAL_TAG_PREFIX",
    "Decision",
    "Evaluation",
    "ModelSource",
    "RegistryError",
    "alias_version",
    "evaluation_of",
    "move_champion",
    "record_decision",
    "register_run_model",
    "registered_name",
    "resolve_model_uri",
    "set_evaluation_tags",
    "version_tags_from_run",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
EVAL_TAG_PREFIX = "eval."
# run tags copied onto a new version; keys are renamed where MLflow's own name is obscure
COPIED_RUN_TAGS = {
    "mlflow.source.git.commit": "vos.git_commit",
    "vos.source_sha256": "vos.source_sha256",
    "vos.run_name": "vos.run_name",
    "vos.stage": "vos.stage",
}
COPIED_RUN_TAG_PREFIXES = ("data.manifest.", EVAL_TAG_PREFIX)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says which model and why."""


def registered_name(model: str) -> str:
    """The registered model name for an architecture (`gc` -> `gc-vos`); any other valid MLflow
    model name is taken as it is (e.g. `gc-vos-customer-a`, a separate line of versions)."""
    if model in REGISTERED_MODEL_NAMES:
        return REGISTERED_MODEL_NAMES[model]
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model):
        return model
    known = ", ".join([*REGISTERED_MODEL_NAMES, *REGISTERED_MODEL_NAMES.values()])
    raise RegistryError(
        f"{model!r} is not a model name; expected one of {known} (or a registered name)"
    )


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model URI leads in MLflow: a registry version and/or the run that logged it."""

    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


def resolve_model_uri(client: MlflowClient, uri: str) -> ModelSource:
    """Resolve `models:/name/3`, `models:/name@alias` or `runs:/id/...` to version and run.

    Any other URI (a checkpoint, a .pt file) is neither; `name`, `version`, `run_id` are None.
    """
    match = _MODELS_URI.match(uri)
    if match:
        name = match["name"]
        try:
            found = (
                client.get_model_version(name, match["version"])
                if match["version"]
                else client.get_model_version_by_alias(name, match["alias"])
            )
        except MlflowException as err:
            raise RegistryError(
                f"{uri}: no such model version ({err.message.splitlines()[0]})"
            ) from None
        return ModelSource(
            uri=uri, name=name, version=str(found.version), run_id=found.run_id or None
        )
    match = _RUNS_URI.match(uri)
    if match:
        return ModelSource(uri=uri, run_id=match["run_id"])
    return ModelSource(uri=uri)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Evaluation:
    """The latest evaluation of a version, as read back from its `eval.*` tags."""

    status: str
    jf_mean: float | None
    j_mean: float | None
    f_mean: float | None
    fingerprint: str | None
    run_id: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete" and self.jf_mean is not None

    def tags(self) -> dict[str, str]:
        values = {
            "status": self.status,
            "JF_mean": self.jf_mean,
            "J_mean": self.j_mean,
            "F_mean": self.f_mean,
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
        }
        return {
            f"{EVAL_TAG_PREFIX}{key}": str(value)
            for key, value in values.items()
            if value is not None
        }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def evaluation_of(version: ModelVersion) -> Evaluation | None:
    """The evaluation recorded on a version (None when it was never evaluated)."""
    tags = version.tags or {}
    status = tags.get(f"{EVAL_TAG_PREFIX}status")
    if status is None:
        return None
    return Evaluation(
        status=status,
        jf_mean=_float(tags.get(f"{EVAL_TAG_PREFIX}JF_mean")),
        j_mean=_float(tags.get(f"{EVAL_TAG_PREFIX}J_mean")),
        f_mean=_float(tags.get(f"{EVAL_TAG_PREFIX}F_mean")),
        fingerprint=tags.get(f"{EVAL_TAG_PREFIX}fingerprint"),
        run_id=tags.get(f"{EVAL_TAG_PREFIX}run_id"),
    )


def set_evaluation_tags(
    client: MlflowClient,
    evaluation: Evaluation,
    report: dict[str, Any],
    name: str | None,
    version: str | None,
    run_id: str | None,
) -> None:
    """Record an evaluation on the model version (if any) and on the training run (if any).

    On the run, so that a version registered from it later carries the evaluation too. Stale
    scores of an earlier evaluation are removed when this one has none (a failed evaluation).
    """
    tags = {**evaluation.tags(), f"{EVAL_TAG_PREFIX}report": json.dumps(report, sort_keys=True)}
    tags[f"{EVAL_TAG_PREFIX}at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stale = {f"{EVAL_TAG_PREFIX}{key}" for key in ("JF_mean", "J_mean", "F_mean")} - set(tags)
    if name and version:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        existing = client.get_model_version(name, version).tags or {}
        for key in stale & set(existing):
            client.delete_model_version_tag(name, version, key)
    if run_id:
        run_tags = dict(tags)
        # run tag values are limited to 8000 characters: keep the summary, drop the report
        if len(run_tags[f"{EVAL_TAG_PREFIX}report"]) > 7900:
            run_tags.pop(f"{EVAL_TAG_PREFIX}report")
        for key, value in run_tags.items():
            client.set_tag(run_id, key, value)
        existing_run_tags = client.get_run(run_id).data.tags
        for key in stale & set(existing_run_tags):
            client.delete_tag(run_id, key)


def _architecture_of(run: mlflow.entities.Run) -> str:
    architecture = run.data.params.get("model.name")
    if architecture not in REGISTERED_MODEL_NAMES:
        raise RegistryError(
            f"run {run.info.run_id}: param model.name is {architecture!r}; it does not look like a "
            "training run of pipelines/pretrain.py or finetune.py"
        )
    return architecture


def _config_json(run: mlflow.entities.Run) -> str:
    """The run's resolved config (its config/resolved.json artifact), else its params."""
    try:
        return mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/resolved.json")
    except (MlflowException, OSError):
        return json.dumps(run.data.params, sort_keys=True)


def _signature_json(model_uri: str) -> str:
    try:
        info = mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as err:
        raise RegistryError(
            f"{model_uri}: no logged model there ({str(err).splitlines()[0]})"
        ) from None
    if info.signature is None:
        raise RegistryError(
            f"{model_uri}: the logged model has no signature; log it with runs.model_store.log_model"
        )
    return json.dumps(info.signature.to_dict(), sort_keys=True)


def version_tags_from_run(run: mlflow.entities.Run, model_uri: str) -> dict[str, str]:
    """The tags a version registered from `run` carries (see the module docstring)."""
    tags = {"vos.config": _config_json(run), "vos.signature": _signature_json(model_uri)}
    tags["vos.training_run_id"] = run.info.run_id
    for run_key, version_key in COPIED_RUN_TAGS.items():
        if run_key in run.data.tags:
            tags[version_key] = run.data.tags[run_key]
    for key, value in run.data.tags.items():
        if key.startswith(COPIED_RUN_TAG_PREFIXES):
            tags[key] = value
    return tags


def register_run_model(
    client: MlflowClient, run_id: str, artifact_path: str = "model", model: str | None = None
) -> ModelVersion:
    """Register the model logged by a training run as a new version and make it the challenger.

    The registered model is the one of the run's architecture (or `model`). The new version
    carries the run's config, data manifests, commit, signature and any evaluation of the run.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise RegistryError(f"run {run_id}: not found ({err.message.splitlines()[0]})") from None
    name = registered_name(model) if model else registered_name(_architecture_of(run))
    model_uri = f"runs:/{run_id}/{artifact_path}"
    with runs.pointed_at(client.tracking_uri):
        tags = version_tags_from_run(run, model_uri)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name,
                description=f"Video object segmentation models ({name}); aliases: {CHAMPION}, {CHALLENGER}.",
            )
        # the fluent call resolves runs:/ URIs to MLflow 3 logged models (models:/m-...)
        version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


@dataclass(frozen=True)
class Decision:
    """One promotion decision, as written on the version."""

    outcome: str  # promoted | kept | forced | unchanged
    reason: str
    version: str
    champion_version: str | None
    candidate_jf: float | None
    champion_jf: float | None
    margin: float
    fingerprint: str | None
    by: str = ""
    at: str = ""

    @property
    def moves_champion(self) -> bool:
        return self.outcome in ("promoted", "forced")

    def tags(self) -> dict[str, str]:
        return {
            f"promotion.{key}": "" if value is None else str(value)
            for key, value in asdict(self).items()
        }


def record_decision(client: MlflowClient, name: str, decision: Decision) -> None:
    """Write a decision on its version: the latest as `promotion.*`, all in `promotion.history`."""
    current = client.get_model_version(name, decision.version).tags or {}
    history = json.loads(current.get("promotion.history", "[]"))
    history.append(asdict(decision))
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, decision.version, key, value)
    client.set_model_version_tag(name, decision.version, "promotion.history", json.dumps(history))


def move_champion(client: MlflowClient, name: str, version: str, when: str) -> str | None:
    """Give `champion` to `version` (dropping its `challenger` alias); returns the former champion."""
    former = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    if former is not None and str(former.version) != str(version):
        client.set_model_version_tag(name, former.version, "promotion.replaced_by", str(version))
        client.set_model_version_tag(name, former.version, "promotion.replaced_at", when)
        return str(former.version)
    return None
