"""The MLflow model registry as this project uses it: names, aliases and what a version carries.

One registered model per architecture (`gc-vos`, `gvos-scm-vos`, `stm-vos`). Versions are
found by alias, never by stage: `challenger` marks the newest candidate, `champion` the
model users get. A version is MLflow's link to its training run (`run_id`) and its logged
model (`model_id`: the config as params, the signature, the evaluation metrics per dataset),
and carries only a few tags of its own:

    vos.git_commit, vos.git_dirty   the code that trained it             copied from the run
    eval.<set>.JF_mean              its J&F on evaluation set <set>      written by evaluations
    eval.<set>.status               complete | partial | failed
    eval.<set>.run_id, .at          the evaluation run (report, scores, overlays) and its time
    promotion.outcome, .reason,     the latest decision on it
    promotion.by, .at
    promotion.history               every decision on it and every time it lost `champion` (JSON)

An evaluation set is named `<folder>-<fingerprint[:8]>` (`evaluation_set_name`): its data
URL's last part and the fingerprint of its frames, masks and input resolution, so two scores
under the same name are comparable and a re-made set gets a new name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking import runs
from training.config import REGISTERED_MODEL_NAMES

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Decision",
    "ModelSource",
    "RegistryError",
    "Score",
    "alias_version",
    "evaluation_set_name",
    "model_id_of",
    "move_champion",
    "record_decision",
    "record_score",
    "register_run_model",
    "registered_name",
    "resolve_model_uri",
    "scores_of",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
EVAL_TAG_PREFIX = "eval."
HISTORY_TAG = "promotion.history"
SCORE_FIELDS = ("status", "JF_mean", "run_id", "at")


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


# -- where a model URI leads ------------------------------------------------------------------

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model URI leads in MLflow: a registry version, the run that logged it, and the
    logged model (what metrics are recorded against)."""

    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    model_id: str | None = None


def resolve_model_uri(client: MlflowClient, uri: str) -> ModelSource:
    """Resolve `models:/name/3`, `models:/name@alias`, `models:/m-<id>` or `runs:/id/...`.

    Any other URI (a checkpoint, a .pt file) is none of them: all but `uri` are None.
    """
    match = _MODELS_URI.match(uri)
    if match and not _LOGGED_MODEL_URI.match(uri):
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
            uri=uri,
            name=name,
            version=str(found.version),
            run_id=found.run_id or None,
            model_id=model_id_of(found),
        )
    match = _LOGGED_MODEL_URI.match(uri)
    if match:
        logged = client.get_logged_model(match["model_id"])
        return ModelSource(uri=uri, run_id=logged.source_run_id, model_id=logged.model_id)
    match = _RUNS_URI.match(uri)
    if match:
        return ModelSource(uri=uri, run_id=match["run_id"], model_id=_logged_model_id(uri))
    return ModelSource(uri=uri)


def model_id_of(version: ModelVersion) -> str | None:
    """The logged model behind a version (the server leaves `model_id` empty on versions
    registered from a run; their source is then the logged model's `models:/m-<id>`)."""
    if version.model_id:
        return version.model_id
    match = _LOGGED_MODEL_URI.match(version.source or "")
    return match["model_id"] if match else None


def _logged_model_id(model_uri: str) -> str | None:
    try:
        return mlflow.models.get_model_info(model_uri).model_id
    except (MlflowException, OSError):
        return None


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


# -- scores per evaluation set ----------------------------------------------------------------


def evaluation_set_name(data_url: str, fingerprint: str) -> str:
    """`<last part of the data URL>-<fingerprint[:8]>`, e.g. `davis2017-val-1a2b3c4d`."""
    folder = data_url.rstrip("/").rsplit("/", 1)[-1]
    folder = re.sub(r"[^A-Za-z0-9_-]+", "-", folder).strip("-") or "data"
    return f"{folder}-{fingerprint[:8]}"


@dataclass(frozen=True)
class Score:
    """A version's evaluation on one evaluation set, as its `eval.<set>.*` tags hold it."""

    set_name: str
    status: str  # complete | partial | failed
    jf_mean: float | None
    run_id: str | None = None
    at: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete" and self.jf_mean is not None

    def tags(self) -> dict[str, str]:
        values = {
            "status": self.status,
            "JF_mean": self.jf_mean,
            "run_id": self.run_id,
            "at": self.at,
        }
        return {
            f"{EVAL_TAG_PREFIX}{self.set_name}.{key}": str(value)
            for key, value in values.items()
            if value is not None
        }


def scores_of(tags: dict[str, str] | ModelVersion) -> dict[str, Score]:
    """Every evaluation set's score recorded in `tags` (a version's or a run's), by set name."""
    if isinstance(tags, ModelVersion):
        tags = tags.tags or {}
    fields: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(EVAL_TAG_PREFIX):
            set_name, _, name = key.removeprefix(EVAL_TAG_PREFIX).rpartition(".")
            if set_name:
                fields.setdefault(set_name, {})[name] = value
    return {
        set_name: Score(
            set_name=set_name,
            status=values["status"],
            jf_mean=_float(values.get("JF_mean")),
            run_id=values.get("run_id"),
            at=values.get("at"),
        )
        for set_name, values in fields.items()
        if "status" in values
    }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def record_score(
    client: MlflowClient, score: Score, name: str | None, version: str | None, run_id: str | None
) -> None:
    """Record a score on the model version (if any) and on the training run (if any: a version
    registered from it later carries it). It replaces the earlier score on the same set only;
    a score of a failed evaluation removes that set's earlier J&F."""
    tags = score.tags()
    stale = {f"{EVAL_TAG_PREFIX}{score.set_name}.{key}" for key in SCORE_FIELDS} - set(tags)
    if name and version:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        for key in stale & set(client.get_model_version(name, version).tags or {}):
            client.delete_model_version_tag(name, version, key)
    if run_id:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        for key in stale & set(client.get_run(run_id).data.tags):
            client.delete_tag(run_id, key)


# -- registration -----------------------------------------------------------------------------


def _architecture_of(run: mlflow.entities.Run) -> str:
    architecture = run.data.params.get("model.name")
    if architecture not in REGISTERED_MODEL_NAMES:
        raise RegistryError(
            f"run {run.info.run_id}: param model.name is {architecture!r}; it does not look like a "
            "training run of pipelines/pretrain.py or finetune.py"
        )
    return architecture


def _check_signature(model_uri: str) -> None:
    try:
        info = mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as err:
        raise RegistryError(
            f"{model_uri}: no logged model there ({str(err).splitlines()[0]})"
        ) from None
    if info.signature is None:
        raise RegistryError(
            f"{model_uri}: the logged model has no signature; log it with "
            "tracking.model_store.log_model"
        )


def version_tags_from_run(run: mlflow.entities.Run) -> dict[str, str]:
    """The tags a version registered from `run` starts with: the commit and the run's scores."""
    run_tags = run.data.tags
    tags = {}
    if runs.GIT_COMMIT_TAG in run_tags:
        tags["vos.git_commit"] = run_tags[runs.GIT_COMMIT_TAG]
    if runs.GIT_DIRTY_TAG in run_tags:
        tags["vos.git_dirty"] = run_tags[runs.GIT_DIRTY_TAG]
    for score in scores_of(run_tags).values():
        tags.update(score.tags())
    return tags


def register_run_model(
    client: MlflowClient, run_id: str, artifact_path: str = "model", model: str | None = None
) -> ModelVersion:
    """Register the model logged by a training run as a new version and make it the challenger.

    The registered model is the one of the run's architecture (or `model`). The new version
    links the run and its logged model and carries the tags of `version_tags_from_run`.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise RegistryError(f"run {run_id}: not found ({err.message.splitlines()[0]})") from None
    name = registered_name(model) if model else registered_name(_architecture_of(run))
    model_uri = f"runs:/{run_id}/{artifact_path}"
    with runs.pointed_at(client.tracking_uri):
        _check_signature(model_uri)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name,
                description=f"Video object segmentation models ({name}); aliases: {CHAMPION}, {CHALLENGER}.",
            )
        # the fluent call resolves runs:/ URIs to MLflow 3 logged models (models:/m-...)
        version = mlflow.register_model(model_uri, name, tags=version_tags_from_run(run))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


# -- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One promotion decision on a version (or, `replaced`, the loss of `champion`)."""

    outcome: str  # promoted | kept | forced | unchanged | replaced
    reason: str
    version: str
    champion_version: str | None  # the champion before the decision
    evaluation_set: str | None  # the set both scores are on
    candidate_jf: float | None
    champion_jf: float | None
    margin: float
    by: str = ""
    at: str = ""
    replaced_by: str | None = None  # set on `replaced`

    @property
    def moves_champion(self) -> bool:
        return self.outcome in ("promoted", "forced")

    def tags(self) -> dict[str, str]:
        return {f"promotion.{key}": getattr(self, key) for key in ("outcome", "reason", "by", "at")}


def record_decision(client: MlflowClient, name: str, decision: Decision) -> None:
    """Write a decision on its version: the latest as `promotion.*`, all in `promotion.history`."""
    current = client.get_model_version(name, decision.version).tags or {}
    history = json.loads(current.get(HISTORY_TAG, "[]"))
    history.append(asdict(decision))
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, decision.version, key, value)
    client.set_model_version_tag(name, decision.version, HISTORY_TAG, json.dumps(history))


def move_champion(client: MlflowClient, name: str, version: str) -> None:
    """Give `champion` to `version`, dropping its `challenger` alias."""
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
