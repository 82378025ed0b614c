"""The promotion gate: register a candidate version, decide whether it takes `champion`,
move the aliases and record every decision on the version.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import time

from mlflow.tracking import MlflowClient
from pydantic import Field, model_validator
from rich.console import Console

from core.config import StrictModel
from evaluation.runner import EvaluateConfig, EvaluationSettings, dataset_fingerprint
from registry import scores
from registry.versions import (
    CHALLENGER,
    CHAMPION,
    Decision,
    Evaluation,
    RegistryError,
    alias_version,
    evaluation_of,
    move_champion,
    record_decision,
    register_run_model,
    registered_name,
)
from tracking.runs import resolve_tracking_uri

console = Console()


class PromoteConfig(StrictModel):
    model: str | None = Field(
        None, description="architecture (gc | gvos_scm | stm) or registered name (gc-vos, ...)"
    )
    run_id: str | None = Field(
        None, description="register this training run's model as a new version first"
    )
    artifact_path: str = Field("model", description="the model's artifact path in the run")
    version: str | None = Field(
        None, pattern=r"^\d+$", description="the candidate version (default: the challenger)"
    )
    margin: float = Field(
        0.005, ge=0, le=1, description="J&F (0..1) by which a candidate must beat the champion"
    )
    force: bool = Field(False, description="promote without the gate (needs a reason)")
    reason: str | None = Field(None, description="why: required with force")
    tracking_uri: str | None = Field(None, description="MLflow URI (None: MLFLOW_TRACKING_URI)")
    evaluation: EvaluationSettings | None = Field(
        None, description="evaluate versions lacking a complete evaluation on this set first"
    )

    @model_validator(mode="after")
    def _check(self) -> PromoteConfig:
        if self.force and not (self.reason and self.reason.strip()):
            raise ValueError("force = true needs a reason (--reason '...')")
        if self.model is None and self.run_id is None:
            raise ValueError("give the model (--model gc-vos) or a training run (--run-id)")
        if self.run_id is not None and self.version is not None:
            raise ValueError("give either run_id (register a new version) or version, not both")
        return self


def decide(
    version: str,
    candidate: Evaluation | None,
    champion_version: str | None,
    champion: Evaluation | None,
    margin: float,
    force: bool = False,
    reason: str | None = None,
) -> Decision:
    """The gate (see the module docstring), as a pure function of the two evaluations."""

    def decision(outcome: str, why: str) -> Decision:
        return Decision(
            outcome=outcome,
            reason=why,
            version=str(version),
            champion_version=champion_version,
            candidate_jf=candidate.jf_mean if candidate else None,
            champion_jf=champion.jf_mean if champion else None,
            margin=margin,
            fingerprint=candidate.fingerprint if candidate else None,
        )

    if champion_version is not None and str(champion_version) == str(version):
        return decision("unchanged", f"version {version} already holds {CHAMPION}")
    if force:
        return decision("forced", f"forced: {reason}")
    if candidate is None:
        return decision("kept", "the candidate has no evaluation; run `vos evaluate` first")
    if not candidate.complete:
        return decision(
            "kept", f"the candidate's evaluation is {candidate.status}: it never promotes"
        )
    if champion_version is None:
        return decision("promoted", "first evaluated version: it becomes the champion")
    if champion is None or not champion.complete:
        status = champion.status if champion else "missing"
        return decision(
            "kept", f"the champion's evaluation is {status}; it cannot be compared (re-evaluate it)"
        )
    if champion.fingerprint != candidate.fingerprint:
        return decision(
            "kept",
            f"evaluated on different sets (fingerprints {candidate.fingerprint} vs "
            f"{champion.fingerprint}); evaluate both on the same set",
        )
    gain = candidate.jf_mean - champion.jf_mean
    verdict = "beats" if gain > margin else "does not beat"
    return decision(
        "promoted" if gain > margin else "kept",
        f"J&F {candidate.jf_mean:.4f} vs champion {champion.jf_mean:.4f} (gain {gain:+.4f}) "
        f"{verdict} the margin {margin}",
    )


def current_user() -> str:
    return os.environ.get("VOS_USER") or getpass.getuser()


def _candidate(client: MlflowClient, config: PromoteConfig) -> tuple[str, str]:
    """(registered name, candidate version), registering the run's model when asked."""
    if config.run_id:
        version = register_run_model(client, config.run_id, config.artifact_path, config.model)
        console.print(
            f"registered run {config.run_id} as {version.name} version {version.version} "
            f"({CHALLENGER})",
            highlight=False,
        )
        return version.name, str(version.version)
    name = registered_name(config.model)
    if config.version:
        return name, config.version
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{name}: no version holds {CHALLENGER}; give --version or --run-id")
    return name, str(challenger.version)


def _evaluate_if_needed(
    client: MlflowClient, name: str, versions: list[str], config: PromoteConfig
) -> None:
    """Evaluate each version lacking a complete evaluation on the configured set."""
    settings = config.evaluation.model_dump()
    settings["tracking"]["uri"] = settings["tracking"]["uri"] or client.tracking_uri
    fingerprint = dataset_fingerprint(config.evaluation)
    for version in versions:
        recorded = evaluation_of(client.get_model_version(name, version))
        if recorded is not None and recorded.complete and recorded.fingerprint == fingerprint:
            continue
        console.print(
            f"evaluating {name} version {version} on {config.evaluation.data}", highlight=False
        )
        scores.run(EvaluateConfig(model=f"models:/{name}/{version}", **settings))


def run(config: PromoteConfig) -> Decision:
    """Decide on a candidate version, move the aliases and record the decision."""
    client = MlflowClient(resolve_tracking_uri(config.tracking_uri))
    name, version = _candidate(client, config)
    champion = alias_version(client, name, CHAMPION)
    if config.evaluation is not None:
        versions = [version] + ([str(champion.version)] if champion else [])
        _evaluate_if_needed(client, name, versions, config)
        champion = alias_version(client, name, CHAMPION)

    candidate_version = client.get_model_version(name, version)
    decision = decide(
        version,
        evaluation_of(candidate_version),
        str(champion.version) if champion else None,
        evaluation_of(champion) if champion else None,
        config.margin,
        config.force,
        config.reason,
    )
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    decision = dataclasses.replace(decision, by=current_user(), at=when)
    if decision.moves_champion:
        move_champion(client, name, version, when)
    record_decision(client, name, decision)
    return decision
