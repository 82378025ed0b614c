"""The promotion gate: register a candidate version, decide whether it takes `champion`,
move the aliases and record every decision on the versions it concerns.

Scores are compared on one evaluation set only (the configured one, else the one both
versions were last scored on) and the decision's reason names it. Decisions on a registered
model are serialised by a lease (`core.lease`) at `<lock_url>/promote-<name>`: the
champion is read again inside it, so two promotions at once are decided one after the
other, each against the champion the other left, and the history of both the new and the
replaced champion says what happened. A second contender waits for the lease, up to
`lock_timeout_s`. Every promoter of a model must use the same `lock_url`: by default
`$VOS_STORAGE/locks` (the shared storage of the stack or the cluster), else
`~/.vos/locks` (which serialises promotions on this machine only).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from pydantic import Field, model_validator

from core import storage
from core.cli import console, utc_timestamp
from core.config import StrictModel
from core.lease import Lease, LeaseHeld
from evaluation.runner import EvaluateConfig, EvaluationSettings, dataset_fingerprint
from registry import scores
from registry.versions import (
    CHALLENGER,
    CHAMPION,
    Decision,
    RegistryError,
    Score,
    alias_version,
    evaluation_set_name,
    move_champion,
    record_decision,
    register_run_model,
    registered_name,
    scores_of,
)
from tracking.runs import resolve_tracking_uri, sigterm_raises


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
    lock_url: str | None = Field(
        None,
        description="folder or URL of the decision lock, shared by every promoter of a model "
        "(None: $VOS_STORAGE/locks, else ~/.vos/locks)",
    )
    lock_timeout_s: float = Field(
        300, ge=0, description="how long to wait for another decision to finish"
    )
    lock_ttl_s: float = Field(
        1800, gt=0, description="a lock older than this is taken as left by a crashed promoter"
    )
    summary_url: str | None = Field(
        None, description="also write the decision here as JSON (for jobs that submit promote)"
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


def choose_set(
    candidate: dict[str, Score], champion: dict[str, Score] | None, configured: str | None
) -> str | None:
    """The evaluation set a decision compares on: the configured one, else of the sets both
    versions have scores on (the candidate's alone without a champion) the one the candidate
    was last evaluated on, complete evaluations first."""
    if configured is not None:
        return configured
    names = set(candidate) & set(champion) if champion is not None else set(candidate)
    if not names:
        return None
    return max(names, key=lambda name: (candidate[name].complete, candidate[name].at or ""))


def decide(
    version: str,
    candidate: dict[str, Score],
    champion_version: str | None,
    champion: dict[str, Score] | None,
    margin: float,
    force: bool = False,
    reason: str | None = None,
    evaluation_set: str | None = None,
) -> Decision:
    """The gate (see pipelines/promote.py), as a pure function of the two versions' scores.

    `evaluation_set`: the set to compare on (None: see `choose_set`)."""
    set_name = choose_set(candidate, champion, evaluation_set)
    mine = candidate.get(set_name) if set_name else None
    theirs = champion.get(set_name) if set_name and champion is not None else None
    on_set = f"on {set_name}: " if set_name else ""

    def decision(outcome: str, why: str) -> Decision:
        return Decision(
            outcome=outcome,
            reason=why,
            version=str(version),
            champion_version=champion_version,
            evaluation_set=set_name,
            candidate_jf=mine.jf_mean if mine else None,
            champion_jf=theirs.jf_mean if theirs else None,
            margin=margin,
        )

    if champion_version is not None and str(champion_version) == str(version):
        return decision("unchanged", f"version {version} already holds {CHAMPION}")
    if force:
        return decision("forced", f"forced: {reason}")
    if set_name is None:
        if not candidate:
            return decision("kept", "the candidate has no evaluation; run `vos evaluate` first")
        return decision(
            "kept",
            f"no evaluation set in common (candidate: {', '.join(sorted(candidate))}; champion: "
            f"{', '.join(sorted(champion or {})) or 'none'}); evaluate both on the same set",
        )
    if mine is None:
        return decision("kept", f"the candidate has no evaluation on {set_name}")
    if not mine.complete:
        return decision(
            "kept", f"{on_set}the candidate's evaluation is {mine.status}: it never promotes"
        )
    if champion_version is None:
        return decision("promoted", f"{on_set}first evaluated version: it becomes the champion")
    if theirs is None or not theirs.complete:
        status = theirs.status if theirs else "missing"
        return decision(
            "kept",
            f"{on_set}the champion's evaluation is {status}; it cannot be compared (re-evaluate it)",
        )
    gain = mine.jf_mean - theirs.jf_mean
    verdict = "beats" if gain > margin else "does not beat"
    return decision(
        "promoted" if gain > margin else "kept",
        f"{on_set}J&F {mine.jf_mean:.4f} vs champion {theirs.jf_mean:.4f} (gain {gain:+.4f}) "
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
    client: MlflowClient, name: str, versions: list[str], config: PromoteConfig, set_name: str
) -> bool:
    """Evaluate each version lacking a complete evaluation on the configured set; returns
    whether any was evaluated."""
    settings = config.evaluation.model_dump()
    settings["tracking"]["uri"] = settings["tracking"]["uri"] or client.tracking_uri
    evaluated = False
    for version in versions:
        recorded = scores_of(client.get_model_version(name, version)).get(set_name)
        if recorded is not None and recorded.complete:
            continue
        console.print(
            f"evaluating {name} version {version} on {config.evaluation.data}", highlight=False
        )
        scores.run(EvaluateConfig(model=f"models:/{name}/{version}", **settings))
        evaluated = True
    return evaluated


def decision_lock_url(lock_url: str | None, name: str) -> str:
    """Where the lease on decisions about registered model `name` lives."""
    if lock_url is None:
        shared = os.environ.get("VOS_STORAGE")
        lock_url = storage.join(shared, "locks") if shared else str(Path.home() / ".vos" / "locks")
    return storage.join(lock_url, f"promote-{name}")


@contextmanager
def decision_lock(config: PromoteConfig, name: str) -> Iterator[Lease]:
    """Hold the lease on decisions about `name`, waiting up to `lock_timeout_s` for it."""
    url = decision_lock_url(config.lock_url, name)
    lease = Lease(url, config.lock_ttl_s)
    deadline = time.monotonic() + config.lock_timeout_s
    pause = 0.2
    while True:
        try:
            lease.acquire()
            break
        except LeaseHeld as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RegistryError(
                    f"{name}: another promotion held the decision lock {url} for "
                    f"{config.lock_timeout_s:g} s ({_holder(err)}); try again later"
                ) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)
        except RuntimeError as err:  # the lease cannot be taken at all (storage refuses it)
            raise RegistryError(f"{name}: decision lock {url}: {err}") from None
    try:
        yield lease
    finally:
        lease.release()


def _renew(lease: Lease, name: str) -> None:
    try:
        lease.renew()
    except RuntimeError as err:  # lost: it expired and another promoter took it
        raise RegistryError(
            f"{name}: the decision lock expired while evaluating ({err}); raise lock_ttl_s"
        ) from None


def _holder(err: LeaseHeld) -> str:
    """Who holds the lease: its record's holder, else what the lease's message says."""
    record = getattr(err, "record", None)
    return f"held by {record.holder}" if record is not None else str(err)


def run(config: PromoteConfig) -> Decision:
    """Decide on a candidate version, move the aliases and record the decision."""
    client = MlflowClient(resolve_tracking_uri(config.tracking_uri))
    name, version = _candidate(client, config)
    set_name = None
    if config.evaluation is not None:
        set_name = evaluation_set_name(
            config.evaluation.data, dataset_fingerprint(config.evaluation)
        )
        champion = alias_version(client, name, CHAMPION)
        versions = [version] + ([str(champion.version)] if champion else [])
        _evaluate_if_needed(client, name, versions, config, set_name)
    with sigterm_raises(), decision_lock(config, name) as lease:  # a SIGTERM releases it too
        # read again: another decision may have moved it meanwhile (then its new holder may
        # lack a score on the set, and is evaluated here, inside the lock)
        champion = alias_version(client, name, CHAMPION)
        if (
            config.evaluation is not None
            and champion is not None
            and _evaluate_if_needed(client, name, [str(champion.version)], config, set_name)
        ):
            _renew(lease, name)
        decision = _decide_and_record(client, name, version, champion, config, set_name)
    if config.summary_url:
        storage.write_bytes_atomic(
            config.summary_url, json.dumps(dataclasses.asdict(decision), indent=2).encode()
        )
    return decision


def _decide_and_record(
    client: MlflowClient,
    name: str,
    version: str,
    champion: ModelVersion | None,
    config: PromoteConfig,
    set_name: str | None,
) -> Decision:
    champion_version = str(champion.version) if champion else None
    decision = decide(
        version,
        scores_of(client.get_model_version(name, version)),
        champion_version,
        scores_of(champion) if champion else None,
        config.margin,
        config.force,
        config.reason,
        set_name,
    )
    decision = dataclasses.replace(decision, by=current_user(), at=utc_timestamp())
    if decision.moves_champion:
        move_champion(client, name, version)
        if champion_version is not None:
            record_decision(client, name, _replaced(decision, champion_version))
    record_decision(client, name, decision)
    return decision


def _replaced(decision: Decision, former: str) -> Decision:
    """What the former champion's history records when `decision` takes `champion` from it."""
    return dataclasses.replace(
        decision,
        outcome="replaced",
        reason=f"version {decision.version} took {CHAMPION} ({decision.outcome}: {decision.reason})",
        version=former,
        replaced_by=decision.version,
    )
