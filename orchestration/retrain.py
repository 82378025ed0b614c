"""`vos retrain`: keep the champion current as new video data arrives.

    vos retrain --config configs/retrain.yaml --once        one cycle (the Kubernetes CronJob)
    vos retrain --config configs/retrain.yaml --every 6h    in the foreground until SIGTERM

A cycle, each step a pipeline stage; every stage that needs Ray runs as a Ray job submitted
through the Jobs API (`jobs.address`, else RAY_API_SERVER_ADDRESS), so this process joins no
cluster and needs no Ray Client:

1. find sequences under `incoming.url` that the ledger has not seen (orchestration.ingest); a bad
   one is quarantined with its reason, the rest go on;
2. generate fine-tuning shards for them: job `python pipelines/generate.py ...`; the shard
   set's manifest is read back from storage. Training mixes them with a replay sample of
   earlier data (`replay.manifests`);
3. fine-tune from the champion: job `python pipelines/finetune.py ...`; its MLflow run is found
   by the run name the cycle gave it;
4. register its model as a new version (registry.versions; MLflow calls only, in this process);
5. evaluate it on the fixed evaluation set and decide on promotion through the gate: job
   `python pipelines/promote.py ...`, which writes its decision as JSON on storage;
6. record in the ledger on object storage: which sequences, which jobs, which run, which
   model version, which decision.

Job ids are fixed per cycle and step (`retrain-<cycle>-<step>`) and the ledger is saved after
every step, so a rerun after a crash resumes the open cycle and waits for the same job instead
of submitting it again: nothing is trained twice on the same data. A lease on the same storage
makes it single-flight: a second trigger exits while one runs. Every job gets the storage and
tracking endpoints of this process and the commit of this code (`VOS_GIT_COMMIT`).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core import cluster, storage
from core.cli import console
from core.config import ConfigError, StrictModel, flatten, load_config
from core.lease import Lease, LeaseError, exit_status
from datagen import generate
from datagen.manifest import manifest_url, read_manifest
from evaluation.runner import EvaluationSettings
from orchestration import ingest
from orchestration.ledger import Cycle, Ledger
from registry import promotion, versions
from tracking import runs
from tracking.runs import resolve_tracking_uri

__all__ = ["RetrainConfig", "Stopped", "main", "run_cycle"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class IncomingSection(StrictModel):
    url: str = Field(min_length=1, description="where new sequences arrive (local path or s3://)")
    layout: Literal["davis", "youtube"] = "davis"
    resolution: str = "480p"


class ReplaySection(StrictModel):
    manifests: list[str] = Field(default_factory=list, description="earlier shard sets to replay")
    weight: float = Field(0.5, gt=0, description="mixing weight of each replay set (new data: 1)")


class FinetuneSection(StrictModel):
    config: str = Field(
        "configs/finetune_gc.yaml", description="fine-tuning config, in jobs.working_dir"
    )
    overrides: list[str] = Field(default_factory=list, description="key=value for that config")


class JobsSection(StrictModel):
    address: str | None = Field(
        None, description="Ray dashboard (Jobs API); None: RAY_API_SERVER_ADDRESS"
    )
    working_dir: str = Field(str(REPO_ROOT), description="uploaded with every job")
    timeout_s: float = Field(6 * 3600, gt=0, description="how long one job may take")
    poll_s: float = Field(5, gt=0, description="how often a job's status is read")


class RetrainConfig(StrictModel):
    model: Literal["gc", "gvos_scm", "stm"] = "gc"
    state_url: str = Field(min_length=1, description="ledger, lease and new shards live here")
    incoming: IncomingSection
    clips: generate.ClipsSection = Field(default_factory=generate.ClipsSection)
    replay: ReplaySection = Field(default_factory=ReplaySection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    evaluation: EvaluationSettings
    margin: float = Field(0.005, ge=0, le=1, description="J&F a candidate must gain to promote")
    lease_ttl_s: float = Field(600, gt=0, description="renewed every ttl/3 while a cycle runs")
    tracking_uri: str | None = None


class Stopped(Exception):
    """SIGTERM (or Ctrl-C) arrived; the open cycle resumes on the next run."""


class Workflow:
    """One retraining cycle; `stop` is set by a signal and checked between and inside steps."""

    def __init__(self, config: RetrainConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.ledger = Ledger(storage.join(config.state_url, "ledger.json"))
        self._jobs = None

    def run(self) -> dict[str, Any]:
        cycle = self.ledger.open_cycle()
        if cycle is None:
            new = self.find_new_sequences()
            if not new:
                console.print("retrain: no new sequences; nothing to do")
                return {"status": "nothing new"}
            cycle = Cycle.new(sorted(new))
            cycle.steps["found"] = {"fingerprints": new}
            self.ledger.start(cycle)
            console.print(
                f"retrain: cycle {cycle.id} on {len(new)} new sequences: {', '.join(sorted(new))}"
            )
        else:
            console.print(f"retrain: resuming cycle {cycle.id} after {', '.join(cycle.steps)}")
        try:
            for step in (self.generate, self.finetune, self.register, self.promote):
                name = step.__name__
                if not cycle.done(name):
                    self.check_stop()
                    self.ledger.record_step(cycle, name, step(cycle))
        except Stopped:
            raise
        except Exception as err:
            cycle.steps["error"] = {"message": " ".join(str(err).split())}
            self.ledger.finish(cycle, "failed", {})
            raise
        self.ledger.finish(cycle, "done", cycle.steps["found"]["fingerprints"])
        decision = cycle.steps["promote"]
        console.print(
            f"retrain: cycle {cycle.id} done: version {decision['version']} {decision['outcome']} "
            f"({decision['reason']})"
        )
        return {"status": "done", "cycle": cycle.id, **decision}

    # -- steps ---------------------------------------------------------------------------------
    def find_new_sequences(self) -> dict[str, str]:
        incoming = self.config.incoming
        found = ingest.find_sequences(incoming.url, incoming.layout, incoming.resolution)
        new: dict[str, str] = {}
        for sequence in found:
            if not self.ledger.is_new(sequence.name, sequence.fingerprint):
                continue
            if sequence.usable:
                new[sequence.name] = sequence.fingerprint
            else:
                console.print(f"retrain: quarantined {sequence.name}: {sequence.problem}")
                self.ledger.quarantine(sequence.name, sequence.fingerprint, sequence.problem)
        return new

    def generate(self, cycle: Cycle) -> dict[str, Any]:
        incoming = self.config.incoming
        config = generate.GenerateConfig(
            source=generate.SourceSection(
                kind=incoming.layout,
                path=incoming.url,
                resolution=incoming.resolution,
                sequences=cycle.sequences,
            ),
            output=generate.OutputSection(
                url=storage.join(self.config.state_url, "shards", cycle.id)
            ),
            clips=self.config.clips,
        )
        job_id = self.run_job(
            cycle, "generate", stage_command("generate", config_overrides(config))
        )
        manifest = manifest_url(config.output.set_url)
        return {
            "job_id": job_id,
            "manifest": manifest,
            "clips": read_manifest(manifest)["total_samples"],
        }

    def finetune(self, cycle: Cycle) -> dict[str, Any]:
        run_name = f"retrain-{cycle.id}"
        command = stage_command(
            "finetune", self.finetune_overrides(cycle, run_name), self.config.finetune.config
        )
        job_id = self.run_job(cycle, "finetune", command)
        tracking_uri = resolve_tracking_uri(self.config.tracking_uri)
        return {
            "job_id": job_id,
            "run_name": run_name,
            "run_id": runs.run_id_by_name(tracking_uri, run_name),
        }

    def finetune_overrides(self, cycle: Cycle, run_name: str) -> list[str]:
        manifests = [cycle.steps["generate"]["manifest"], *self.config.replay.manifests]
        weights = [1.0] + [self.config.replay.weight] * len(self.config.replay.manifests)
        champion = f"models:/{versions.registered_name(self.config.model)}@{versions.CHAMPION}"
        overrides = [
            *self.config.finetune.overrides,
            f"run.name={run_name}",
            f"model.name={self.config.model}",
            f"init.model_uri={champion}",
            f"data.manifests={json.dumps(manifests)}",
            f"data.weights={json.dumps(weights)}",
        ]
        if self.config.tracking_uri:
            overrides.append(f"tracking.uri={json.dumps(self.config.tracking_uri)}")
        return overrides

    def register(self, cycle: Cycle) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(resolve_tracking_uri(self.config.tracking_uri))
        version = versions.register_run_model(
            client, cycle.steps["finetune"]["run_id"], model=self.config.model
        )
        return {"name": version.name, "version": str(version.version)}

    def promote(self, cycle: Cycle) -> dict[str, Any]:
        registered = cycle.steps["register"]
        summary_url = storage.join(self.config.state_url, "cycles", cycle.id, "promote.json")
        config = promotion.PromoteConfig(
            model=registered["name"],
            version=registered["version"],
            margin=self.config.margin,
            evaluation=self.config.evaluation,
            tracking_uri=self.config.tracking_uri,
            summary_url=summary_url,
        )
        job_id = self.run_job(cycle, "promote", stage_command("promote", config_overrides(config)))
        if not storage.exists(summary_url):
            raise RuntimeError(
                f"promote job {job_id} succeeded but wrote no decision at {summary_url}"
            )
        decision = json.loads(storage.read_bytes(summary_url))
        keys = ("version", "outcome", "reason", "evaluation_set", "candidate_jf", "champion_jf")
        return {"job_id": job_id, **{key: decision[key] for key in keys}}

    # -- Ray jobs ------------------------------------------------------------------------------
    @property
    def jobs(self):
        if self._jobs is None:
            from ray.job_submission import JobSubmissionClient

            self._jobs = JobSubmissionClient(self.config.jobs.address)
        return self._jobs

    def run_job(self, cycle: Cycle, step: str, entrypoint: str) -> str:
        """Submit `entrypoint` as job `retrain-<cycle>-<step>` unless it exists (a rerun after a
        crash), wait for it to end and return its id; a job that did not succeed raises."""
        from ray.job_submission import JobStatus

        job_id = f"retrain-{cycle.id}-{step}"
        if _job_exists(self.jobs, job_id):
            console.print(f"retrain: waiting for the {step} job {job_id} submitted before")
        else:
            self.jobs.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env={"working_dir": self.config.jobs.working_dir, "env_vars": job_env()},
            )
            console.print(f"retrain: submitted the {step} job {job_id}")
        deadline = time.monotonic() + self.config.jobs.timeout_s
        status = self.jobs.get_job_status(job_id)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {step} job {job_id} did not finish in {self.config.jobs.timeout_s:g} s"
                )
            self.stop.wait(self.config.jobs.poll_s)
            self.check_stop()
            status = self.jobs.get_job_status(job_id)
        if status != JobStatus.SUCCEEDED:
            tail = self.jobs.get_job_logs(job_id)[-1500:]
            raise RuntimeError(f"the {step} job {job_id} ended {status}: {tail}")
        return job_id

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()


def stage_command(stage: str, overrides: list[str], config_file: str | None = None) -> str:
    """The shell command of a pipeline stage, as a job's entrypoint."""
    config = ["--config", config_file] if config_file else []
    return shlex.join(["python", f"pipelines/{stage}.py", *config, *overrides])


def config_overrides(config: BaseModel) -> list[str]:
    """`key=value` overrides that rebuild `config` (the values that were set) in a stage."""
    data = config.model_dump(mode="json", exclude_unset=True)
    return [f"{key}={json.dumps(value)}" for key, value in flatten(data).items()]


def job_env() -> dict[str, str]:
    """What every job is given: the endpoints (core.cluster), the shared storage and the
    commit of this code."""
    env = cluster.forwarded_env()
    env.update(runs.git_env())
    return env


def run_cycle(config: RetrainConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """One cycle under the lease; returns what happened (also printed)."""
    stop = stop or threading.Event()
    try:
        with Lease(storage.join(config.state_url, "lease"), config.lease_ttl_s).held(
            on_lost=stop.set
        ):
            return Workflow(config, stop).run()
    except LeaseError as err:  # held by a live run (exit 0), stale and not taken over, or lost
        console.print(f"retrain: {err}; exiting")
        status = "busy" if exit_status(err) == 0 else "lease"
        return {"status": status, "reason": str(err), "exit_code": exit_status(err)}


def parse_interval(text: str) -> float:
    """'6h', '30m', '90s' or '1d' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise ConfigError(
            f"config error: --every {text!r}: use a number and s, m, h or d (e.g. 6h)"
        )
    value, unit = float(match.group(1)), match.group(2)
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vos retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="retraining config (configs/retrain.yaml)")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="run one cycle and exit")
    when.add_argument("--every", metavar="INTERVAL", help="run a cycle every INTERVAL (6h, 30m)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(RetrainConfig, args.config, args.overrides)
        interval = parse_interval(args.every) if args.every else None
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while True:
        try:
            result = run_cycle(config, stop)
        except Stopped:
            console.print("retrain: stopped by signal; the open cycle resumes on the next run")
            return 0
        except Exception as err:  # noqa: BLE001 - one line, and the schedule goes on
            message = runs.mask_credentials(" ".join(str(err).split()))
            console.print(f"[red]retrain: cycle failed: {message}[/red]", highlight=False)
            result = {"status": "failed"}
            if interval is None:
                return 1
        if interval is None:
            return result.get("exit_code", 0 if result["status"] != "failed" else 1)
        console.print(f"retrain: next cycle in {args.every}")
        if stop.wait(interval):
            console.print("retrain: stopped by signal")
            return 0


def _job_exists(client, job_id: str) -> bool:
    try:
        client.get_job_info(job_id)
    except RuntimeError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
