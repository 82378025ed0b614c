"""The registry and the promotion gate, on a real MLflow server (SQLite store) on 127.0.0.1.

Versions are registered from a run that logged a tiny model as the training stages do (the
`logged_run` fixture); their scores are recorded with `record_score`, as `vos evaluate`
records them (test_evaluate.py runs real evaluations through the same gate).
"""

from __future__ import annotations

import json
import threading
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from core.cli import utc_timestamp
from core.config import ConfigError, load_config
from core.lease import Lease
from pipelines import promote
from registry import promotion, versions
from registry.versions import CHALLENGER, CHAMPION, Score


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    mlflow.set_tracking_uri(mlflow_server.uri)
    return MlflowClient(mlflow_server.uri)


def new_model_name() -> str:
    return f"gc-vos-test-{uuid.uuid4().hex[:8]}"


def register(client, run_id, name, jf=None, status="complete", on="set-A") -> str:
    version = str(versions.register_run_model(client, run_id, model=name).version)
    if jf is not None or status != "complete":
        score = Score(set_name=on, status=status, jf_mean=jf, at=utc_timestamp())
        versions.record_score(client, score, name, version, None)
    return version


def aliases(client, name) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()
    }


def history(client, name, version) -> list[dict]:
    return json.loads(client.get_model_version(name, version).tags["promotion.history"])


def decide(client, name, **settings):
    return promote.run(promote.PromoteConfig(model=name, margin=0.01, **settings))


def test_a_version_carries_a_few_readable_tags_and_links_its_logged_model(client, logged_run):
    name = new_model_name()
    version = versions.register_run_model(client, logged_run, model=name)
    assert version.tags == {"vos.git_commit": "0123abcd"}  # no config JSON, no manifest tags
    assert version.run_id == logged_run
    logged_model = client.get_logged_model(versions.model_id_of(version))
    assert logged_model.params["model.name"] == "gc"  # the config, as the model's params
    assert logged_model.source_run_id == logged_run
    assert aliases(client, name) == {CHALLENGER: str(version.version)}


def test_architecture_names_map_to_registered_models():
    assert versions.registered_name("gc") == "gc-vos"
    assert versions.registered_name("gvos_scm") == "gvos-scm-vos"
    assert versions.registered_name("stm-vos") == "stm-vos"


def test_scores_on_different_sets_are_kept_apart(client, logged_run):
    name = new_model_name()
    version = register(client, logged_run, name, jf=0.34, on="procedural-1a2b3c4d")
    register_score = Score(set_name="davis-5e6f7a8b", status="complete", jf_mean=0.002)
    versions.record_score(client, register_score, name, version, None)
    failed = Score(set_name="procedural-1a2b3c4d", status="failed", jf_mean=None)
    recorded = versions.scores_of(client.get_model_version(name, version))
    assert {key: score.jf_mean for key, score in recorded.items()} == {
        "procedural-1a2b3c4d": 0.34,
        "davis-5e6f7a8b": 0.002,
    }
    versions.record_score(client, failed, name, version, None)  # a failed evaluation of one set
    tags = client.get_model_version(name, version).tags
    assert "eval.procedural-1a2b3c4d.JF_mean" not in tags
    assert tags["eval.procedural-1a2b3c4d.status"] == "failed"
    assert tags["eval.davis-5e6f7a8b.JF_mean"] == "0.002"
    assert versions.evaluation_set_name("s3://vos/eval/davis2017-val/", "1a2b3c4d5e6f") == (
        "davis2017-val-1a2b3c4d"
    )


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
    assert decision.reason.startswith("on set-A: ")
    assert aliases(client, name) == {CHAMPION: first, CHALLENGER: worse}
    tags = client.get_model_version(name, worse).tags
    assert tags["promotion.outcome"] == "kept" and tags["promotion.by"] == "ci-bot"
    assert tags["promotion.at"].endswith("Z")
    recorded = history(client, name, worse)[-1]
    assert recorded["candidate_jf"] == 0.505 and recorded["champion_jf"] == 0.5
    assert recorded["champion_version"] == first and recorded["evaluation_set"] == "set-A"

    other_set = register(client, logged_run, name, jf=0.9, on="set-B")
    decision = decide(client, name)
    assert decision.outcome == "kept" and "no evaluation set in common" in decision.reason
    assert aliases(client, name)[CHAMPION] == first

    for status in ("failed", "partial"):
        register(client, logged_run, name, jf=0.95 if status == "partial" else None, status=status)
        decision = decide(client, name)
        assert decision.outcome == "kept" and f"evaluation is {status}" in decision.reason
        assert aliases(client, name)[CHAMPION] == first
    assert [entry["outcome"] for entry in history(client, name, first)] == ["promoted"]

    unevaluated = register(client, logged_run, name)
    assert decide(client, name).outcome == "kept"
    assert aliases(client, name) == {CHAMPION: first, CHALLENGER: unevaluated}

    # better on the champion's set, worse on another one: compared on the set both share
    better = register(client, logged_run, name, jf=0.52)
    worse_elsewhere = Score(
        set_name="set-B", status="complete", jf_mean=0.1, at="2000-01-01T00:00:00Z"
    )
    versions.record_score(client, worse_elsewhere, name, better, None)
    decision = decide(client, name)
    assert decision.outcome == "promoted" and "beats the margin" in decision.reason
    assert decision.evaluation_set == "set-A" and "on set-A" in decision.reason
    assert aliases(client, name) == {CHAMPION: better}
    replaced = history(client, name, first)[-1]
    assert replaced["outcome"] == "replaced" and replaced["replaced_by"] == better
    assert client.get_model_version(name, first).tags["promotion.outcome"] == "replaced"

    decision = decide(client, name, version=other_set)  # an explicit version, compared on set-B
    assert decision.outcome == "promoted" and decision.evaluation_set == "set-B"
    assert aliases(client, name)[CHAMPION] == other_set
    assert history(client, name, other_set)[-1]["champion_version"] == better


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

    reason = "rollback: bad data in v1"
    argv = ["--model", name, "--version", failed, "--force", "--reason", reason]
    assert promote.main(argv) == 0
    assert aliases(client, name)[CHAMPION] == failed
    tags = client.get_model_version(name, failed).tags
    assert tags["promotion.outcome"] == "forced"
    assert tags["promotion.reason"] == "forced: rollback: bad data in v1"
    assert tags["promotion.by"] == "alice"
    assert history(client, name, failed)[-1]["by"] == "alice"
    assert history(client, name, champion)[-1]["replaced_by"] == failed


def test_concurrent_forced_promotions_are_decided_one_after_the_other(client, logged_run, tmp_path):
    name = new_model_name()
    settings = {"force": True, "lock_url": str(tmp_path / "locks")}
    original = register(client, logged_run, name, jf=0.5)
    decide(client, name, version=original, reason="the first champion", **settings)
    contenders = [register(client, logged_run, name) for _ in range(2)]

    start = threading.Barrier(len(contenders))
    decisions, errors = {}, []

    def force(version: str) -> None:
        start.wait()
        try:
            decisions[version] = decide(client, name, version=version, reason="race", **settings)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=force, args=(version,)) for version in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(decisions) == 2, errors

    # one saw the original champion, the other the first one's result
    before = {version: decision.champion_version for version, decision in decisions.items()}
    first = next(version for version, champion in before.items() if champion == original)
    second = next(version for version in contenders if version != first)
    assert before[second] == first
    assert aliases(client, name)[CHAMPION] == second
    assert [e["outcome"] for e in history(client, name, original)] == ["forced", "replaced"]
    assert [e["outcome"] for e in history(client, name, first)] == ["forced", "replaced"]
    assert history(client, name, first)[-1]["replaced_by"] == second
    assert [e["outcome"] for e in history(client, name, second)] == ["forced"]


def test_a_contender_waits_for_the_lock_and_gives_up_in_one_line(
    client, logged_run, tmp_path, capsys
):
    name = new_model_name()
    version = register(client, logged_run, name, jf=0.5)
    locks = tmp_path / "locks"
    held = Lease(promotion.decision_lock_url(str(locks), name), ttl_s=60)
    held.acquire()
    capsys.readouterr()  # registration's own output
    argv = ["--model", name, "--version", version, f"lock_url={locks}", "lock_timeout_s=1"]
    assert promote.main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "held the decision lock" in lines[0], lines
    assert held.holder in lines[0]
    assert CHAMPION not in aliases(client, name)

    threading.Timer(1.0, held.release).start()  # released while the contender waits
    assert promote.main([*argv[:-1], "lock_timeout_s=60"]) == 0
    assert aliases(client, name)[CHAMPION] == version


def test_promote_errors_are_one_line(client, capsys):
    assert promote.main(["--model", new_model_name()]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no version holds challenger" in lines[0]
