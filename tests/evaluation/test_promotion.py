"""The registry and the promotion gate, on a real MLflow server (SQLite store) on 127.0.0.1.

Versions are registered from a run that logged a tiny model as the training stages do (the
`logged_run` fixture); their evaluations are recorded with `set_evaluation_tags`, as `vos
evaluate` records them (test_evaluate.py runs real evaluations through the same gate).
"""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from core.config import ConfigError, load_config
from pipelines import promote
from registry import versions
from registry.versions import CHALLENGER, CHAMPION, Evaluation


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    mlflow.set_tracking_uri(mlflow_server.uri)
    return MlflowClient(mlflow_server.uri)


def new_model_name() -> str:
    return f"gc-vos-test-{uuid.uuid4().hex[:8]}"


def register(client, run_id, name, jf=None, status="complete", fingerprint="set-A") -> str:
    version = versions.register_run_model(client, run_id, model=name)
    if jf is not None or status != "complete":
        evaluation = Evaluation(
            status=status, jf_mean=jf, j_mean=jf, f_mean=jf, fingerprint=fingerprint
        )
        versions.set_evaluation_tags(
            client, evaluation, {"status": status}, name, str(version.version), None
        )
    return str(version.version)


def aliases(client, name) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()
    }


def decide(client, name, **settings):
    return promote.run(promote.PromoteConfig(model=name, margin=0.01, **settings))


def test_a_version_carries_config_manifests_commit_and_signature(client, logged_run):
    name = new_model_name()
    version = versions.register_run_model(client, logged_run, model=name)
    tags = version.tags
    assert json.loads(tags["vos.config"])["model"]["name"] == "gc"
    assert tags["vos.git_commit"] == "0123abcd"
    assert tags["data.manifest.0.sha256"] == "a" * 64
    assert tags["vos.training_run_id"] == logged_run
    signature = json.loads(tags["vos.signature"])
    assert "frames" in signature["inputs"] and "labels" in signature["outputs"]
    assert aliases(client, name) == {CHALLENGER: str(version.version)}


def test_architecture_names_map_to_registered_models():
    assert versions.registered_name("gc") == "gc-vos"
    assert versions.registered_name("gvos_scm") == "gvos-scm-vos"
    assert versions.registered_name("stm-vos") == "stm-vos"


def test_the_gate(client, logged_run, monkeypatch):
    monkeypatch.setenv("VOS_USER", "ci-bot")
    name = new_model_name()

    first = register(client, logged_run, name, jf=0.50)
    decision = decide(client, name)
    assert decision.outcome == "promoted" and "first" in decision.reason
    assert aliases(client, name) == {CHAMPION: first}  # no longer the challenger

    worse = register(client, logged_run, name, jf=0.505)  # gains 0.005 < margin 0.01
    decision = decide(client, name)
    assert decision.outcome == "kept" and "does not beat the margin" in decision.reason
    assert aliases(client, name) == {CHAMPION: first, CHALLENGER: worse}
    tags = client.get_model_version(name, worse).tags
    assert tags["promotion.outcome"] == "kept" and tags["promotion.by"] == "ci-bot"
    assert tags["promotion.candidate_jf"] == "0.505" and tags["promotion.champion_jf"] == "0.5"
    assert tags["promotion.champion_version"] == first and tags["promotion.at"].endswith("Z")

    other_set = register(client, logged_run, name, jf=0.9, fingerprint="set-B")
    decision = decide(client, name)
    assert decision.outcome == "kept" and "different sets" in decision.reason
    assert aliases(client, name)[CHAMPION] == first

    for status in ("failed", "partial"):
        register(client, logged_run, name, jf=0.95 if status == "partial" else None, status=status)
        decision = decide(client, name)
        assert decision.outcome == "kept" and f"evaluation is {status}" in decision.reason
        assert aliases(client, name)[CHAMPION] == first
    assert "promotion.replaced_by" not in client.get_model_version(name, first).tags

    unevaluated = register(client, logged_run, name)
    assert decide(client, name).outcome == "kept"
    assert aliases(client, name) == {CHAMPION: first, CHALLENGER: unevaluated}

    better = register(client, logged_run, name, jf=0.52)
    decision = decide(client, name)
    assert decision.outcome == "promoted" and "beats the margin" in decision.reason
    assert aliases(client, name) == {CHAMPION: better}
    assert client.get_model_version(name, first).tags["promotion.replaced_by"] == better

    decision = decide(client, name, version=other_set)  # an explicit version, still gated
    assert decision.outcome == "kept"
    assert aliases(client, name)[CHAMPION] == better
    assert (
        json.loads(client.get_model_version(name, other_set).tags["promotion.history"])[-1][
            "outcome"
        ]
        == "kept"
    )


def test_force_needs_a_reason_and_is_recorded(client, logged_run, monkeypatch):
    monkeypatch.setenv("VOS_USER", "alice")
    name = new_model_name()
    champion = register(client, logged_run, name, jf=0.7)
    decide(client, name)
    failed = register(client, logged_run, name, status="failed")

    with pytest.raises(ConfigError, match="force = true needs a reason"):
        load_config(promote.PromoteConfig, None, [f"model={name}", "force=true"])
    assert promote.main(["--model", name, "--force"]) == 1
    assert aliases(client, name)[CHAMPION] == champion

    assert (
        promote.main(
            [
                "--model",
                name,
                "--version",
                failed,
                "--force",
                "--reason",
                "rollback: bad data in v1",
            ]
        )
        == 0
    )
    assert aliases(client, name)[CHAMPION] == failed
    tags = client.get_model_version(name, failed).tags
    assert tags["promotion.outcome"] == "forced"
    assert tags["promotion.reason"] == "forced: rollback: bad data in v1"
    assert tags["promotion.by"] == "alice"
    assert json.loads(tags["promotion.history"])[-1]["by"] == "alice"


def test_promote_errors_are_one_line(client, capsys):
    assert promote.main(["--model", new_model_name()]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no version holds challenger" in lines[0]
