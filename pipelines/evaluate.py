"""`vos evaluate`: score a model on DAVIS-layout sequences (J&F, speed, memory) and record it.

    vos evaluate --model models:/gc-vos@challenger --data DAVIS_ROOT [--config FILE] [key=value ...]

Every sequence (`DAVIS_ROOT/JPEGImages/480p/<seq>/`, ground truth in `Annotations/480p/`) goes
through the model's streaming `VideoSegmenter` from its first-frame mask, at the configured
`resolution` (`original`, `<N>p` or a scale: tiny models see small frames); the masks are
written at full size under `out` and scored with the DAVIS measures (pipelines/davis_metrics).
Frames per second count the model's time only; peak memory is the peak RSS of the process
that ran the sequence (CPU) or `torch.cuda.max_memory_allocated` (GPU), plus the bytes held
in the segmenter's per-video memory. With `workers > 1` the sequences are spread over Ray
tasks (the data folder must then be readable at the same path on every node).

The report (JSON and a table) goes to `out`, and to MLflow: a run nested under the training
run that logged the model (else in `tracking.experiment`), with per-sequence scores and
overlays of the worst frames. The scores are set as `eval.*` tags on the model version (a
registry URI) and on the training run (so that a version registered from it carries them).
A sequence that fails makes the evaluation `partial` (all fail: `failed`); only a `complete`
evaluation can promote a model (pipelines/promote.py). Exit status: 0 only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import Field, field_validator
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from datagen import storage
from pipelines.config import ConfigError, StrictModel, flatten, load_config
from pipelines.davis_metrics import FrameError, SequenceScore, SequenceScorer, summarize
from pipelines.eval_masks import DavisLayoutError, results_table, sequence_names
from pipelines.masks_io import MaskError, encode_mask, list_frames, overlay, read_frame, read_mask
from pipelines.model_io import load_model
from pipelines.registry import (
    Evaluation,
    ModelSource,
    RegistryError,
    resolve_model_uri,
    set_evaluation_tags,
)
from pipelines.segment import RESOLUTION_HELP, check_resolution, resolve_device, segment_video
from pipelines.tracking import pointed_at, resolve_tracking_uri

__all__ = [
    "EvaluateConfig",
    "EvaluationSettings",
    "SequenceOutcome",
    "dataset_fingerprint",
    "main",
    "run",
]

console = Console()
# storage endpoints forwarded to Ray workers (credentials come from each node's AWS chain)
FORWARDED_ENV = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "VOS_CACHE",  # where an evaluation set on object storage is mirrored
]


class TrackingSettings(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI; None: MLFLOW_TRACKING_URI")
    experiment: str | None = Field(
        None, description="None: nested under the model's training run, else 'vos-evaluation'"
    )
    log: bool = Field(True, description="log the evaluation to MLflow")


class EvaluationSettings(StrictModel):
    """How to evaluate (everything but the model); `vos promote` reuses it."""

    data: str = Field(
        min_length=1, description="DAVIS root (JPEGImages/ and Annotations/): a path or s3:// URL"
    )
    annotations: str = Field("480p", description="DAVIS resolution folder (480p | Full-Resolution)")
    sequences: list[str] | None = Field(None, description="sequence names (default: all)")
    resolution: str | float = Field("original", description=f"model input size: {RESOLUTION_HELP}")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    workers: int = Field(1, ge=1, description="parallel Ray tasks (1: in this process)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs (and torch threads) per Ray task")
    threads: int | None = Field(None, gt=0, description="torch CPU threads in this process")
    cluster_address: str | None = Field(None, description="Ray address; None: RAY_ADDRESS or local")
    out: str | None = Field(None, description="where masks and report go (default: under runs/)")
    worst_frames: int = Field(4, ge=0, description="overlays of the worst frames logged to MLflow")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | float) -> str | float:
        return check_resolution(value)


class EvaluateConfig(EvaluationSettings):
    model: str = Field(
        min_length=1, description="models:/name@alias, runs:/id/model, checkpoint or .pt"
    )


# -- the evaluation set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceFiles:
    name: str
    frames: list[Path]
    masks: list[Path]
    root: Path  # the local copy of the evaluation set that the paths are in

    def moved(self, new_root: Path) -> SequenceFiles:
        """The same files under another copy of the evaluation set."""
        return SequenceFiles(
            self.name,
            [new_root / path.relative_to(self.root) for path in self.frames],
            [new_root / path.relative_to(self.root) for path in self.masks],
            new_root,
        )


def sequence_files(settings: EvaluationSettings) -> list[SequenceFiles]:
    """The frames and ground-truth masks of each sequence; one line when the layout is off.
    A set on object storage (`s3://...`) is mirrored to a local cache first."""
    root = storage.local_copy(settings.data)
    files = []
    for name in sequence_names(root, settings.sequences, settings.annotations):
        try:
            frames = list_frames(root / "JPEGImages" / settings.annotations / name)
        except MaskError as err:
            raise DavisLayoutError(f"{name}: {err}") from None
        masks = {
            path.stem: path
            for path in (root / "Annotations" / settings.annotations / name).glob("*.png")
        }
        unmatched = [frame.stem for frame in frames if frame.stem not in masks]
        if unmatched:
            raise DavisLayoutError(f"{name}: frame {unmatched[0]} has no ground-truth mask")
        if len(frames) < 3:
            raise DavisLayoutError(f"{name}: {len(frames)} frames; at least 3 are needed")
        files.append(SequenceFiles(name, frames, [masks[frame.stem] for frame in frames], root))
    return files


def dataset_fingerprint(settings: EvaluationSettings) -> str:
    """sha256 of what decides the scores besides the model: every frame and mask, and the
    input resolution. Two evaluations are comparable only when their fingerprints are equal."""
    return fingerprint_of(sequence_files(settings), settings.resolution)


def fingerprint_of(files: list[SequenceFiles], resolution: str | float) -> str:
    digest = hashlib.sha256(json.dumps({"resolution": resolution}).encode())
    for sequence in files:
        digest.update(sequence.name.encode())
        for path in [*sequence.frames, *sequence.masks]:
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


# -- one sequence ---------------------------------------------------------------------------------


@dataclass
class SequenceOutcome:
    """What evaluating one sequence gave: its score, or the error that stopped it."""

    name: str
    score: SequenceScore | None = None
    error: str | None = None
    frames: int = 0
    model_seconds: float = 0.0
    peak_memory_bytes: int = 0
    state_bytes: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.model_seconds if self.model_seconds > 0 else float("nan")

    def row(self) -> dict[str, Any]:
        if self.score is None:
            return {"status": "failed", "error": self.error}
        return {
            "status": "complete",
            "J": self.score.j_mean,
            "F": self.score.f_mean,
            "JF": self.score.jf_mean,
            "objects": len(self.score.objects),
            "frames": self.frames,
            "fps": self.fps,
            "peak_memory_mb": self.peak_memory_bytes / 2**20,
            "state_mb": self.state_bytes / 2**20,
        }


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA allocator stats, or the process's peak RSS (Linux clear_refs)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    # not Linux: the peak then covers the whole process's life
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def evaluate_sequence(
    net, files: SequenceFiles, resolution: str | float, device: str, masks_url: str
) -> SequenceOutcome:
    """Segment one sequence, write its masks under `masks_url/<name>/` and score them as they
    come (no sequence is held in memory, so the peak memory is the model's)."""
    outcome = SequenceOutcome(files.name)
    try:
        first_truth = read_mask(files.masks[0])
        if first_truth.max() == 0:
            raise FrameError(f"{files.name}: the first ground-truth mask has no object")
        scorer = SequenceScorer(files.name, len(files.frames), first_truth)
        reset_peak_memory(device)
        frames = (read_frame(path) for path in files.frames)
        steps = segment_video(net, frames, first_truth, resolution, device)
        for frame_path, mask_path, step in zip(files.frames, files.masks, steps, strict=True):
            mask_url = storage.join(masks_url, files.name, f"{frame_path.stem}.png")
            storage.write_bytes_atomic(mask_url, encode_mask(step.labels))
            scorer.add(frame_path.stem, read_mask(mask_path), step.labels)
            outcome.frames += 1
            outcome.model_seconds += step.seconds
            outcome.state_bytes = max(outcome.state_bytes, step.state_nbytes)
        outcome.peak_memory_bytes = peak_memory_bytes(device)
        outcome.score = scorer.score()
    except Exception as err:  # one failed sequence must not lose the others: recorded, reported
        outcome.error = describe_error(err)
    return outcome


def describe_error(err: BaseException) -> str:
    """One line: the exception, its message's first line and where it was raised."""
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    message = str(err).splitlines()[0] if str(err) else ""
    place = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(err).__name__}: {message}{place}"


def _remote_evaluate_sequence(net, files, data, resolution, device, masks_url, threads):
    torch.set_num_threads(max(1, int(threads)))
    if not storage.is_local(data):  # the driver's mirror is on its machine: mirror it here too
        files = files.moved(storage.local_copy(data))
    return evaluate_sequence(net, files, resolution, device, masks_url)


# -- all sequences --------------------------------------------------------------------------------


def _progress() -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, transient=True)


def evaluate_sequences(
    net, config: EvaluateConfig, files: list[SequenceFiles], device: str, masks_url: str
) -> list[SequenceOutcome]:
    """Every sequence, in this process or spread over Ray tasks (`workers` at a time)."""
    if config.workers == 1 or len(files) == 1:
        outcomes = []
        with _progress() as progress:
            task = progress.add_task("evaluating sequences", total=len(files))
            for sequence in files:
                progress.update(task, description=f"evaluating {sequence.name}")
                outcomes.append(
                    evaluate_sequence(net, sequence, config.resolution, device, masks_url)
                )
                progress.advance(task)
        return outcomes
    return _evaluate_on_ray(net, config, files, device, masks_url)


def _evaluate_on_ray(
    net, config: EvaluateConfig, files: list[SequenceFiles], device: str, masks_url: str
) -> list[SequenceOutcome]:
    import ray

    if not ray.is_initialized():
        ray.init(address=config.cluster_address, logging_level="WARNING")
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    remote = ray.remote(_remote_evaluate_sequence).options(
        num_cpus=config.cpus_per_worker,
        num_gpus=1 if device.startswith("cuda") else 0,
        runtime_env={"env_vars": forwarded} if forwarded else None,
        max_retries=1,
    )
    net_ref = ray.put(net.cpu())
    worker_device = "cuda" if device.startswith("cuda") else "cpu"
    pending, queued, done = {}, list(files), {}
    with _progress() as progress:
        task = progress.add_task(f"evaluating on {config.workers} Ray workers", total=len(files))
        while queued or pending:
            while queued and len(pending) < config.workers:
                sequence = queued.pop(0)
                ref = remote.remote(
                    net_ref,
                    sequence,
                    config.data,
                    config.resolution,
                    worker_device,
                    masks_url,
                    config.cpus_per_worker,
                )
                pending[ref] = sequence.name
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                done[name] = ray.get(ready[0])
            except Exception as err:  # the task itself died (worker lost): the sequence failed
                done[name] = SequenceOutcome(name, error=describe_error(err))
            progress.advance(task)
    return [done[sequence.name] for sequence in files]


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything an evaluation found; `as_dict` is the JSON written and logged."""

    config: EvaluateConfig
    fingerprint: str
    device: str
    outcomes: list[SequenceOutcome] = field(default_factory=list)
    error: str | None = None  # set when nothing could run (e.g. the model did not load)
    run_id: str | None = None

    @property
    def scores(self) -> list[SequenceScore]:
        return [outcome.score for outcome in self.outcomes if outcome.score is not None]

    @property
    def status(self) -> str:
        if self.error or not self.scores:
            return "failed"
        return "complete" if len(self.scores) == len(self.outcomes) else "partial"

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": self.status,
            "model": self.config.model,
            "data": self.config.data,
            "fingerprint": self.fingerprint,
            "resolution": self.config.resolution,
            "device": self.device,
        }
        if self.error:
            report["error"] = self.error
        if self.scores:
            summary = summarize(self.scores)
            report.update({key: value for key, value in summary.items() if key != "sequences"})
            finished = [outcome for outcome in self.outcomes if outcome.score is not None]
            frames = sum(outcome.frames for outcome in finished)
            seconds = sum(outcome.model_seconds for outcome in finished)
            report["fps"] = frames / seconds if seconds else None
            report["peak_memory_mb"] = (
                max(outcome.peak_memory_bytes for outcome in finished) / 2**20
            )
            report["state_mb"] = max(outcome.state_bytes for outcome in finished) / 2**20
        report["sequences"] = {outcome.name: outcome.row() for outcome in self.outcomes}
        if self.run_id:
            report["run_id"] = self.run_id
        return report


def default_out(config: EvaluateConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.environ.get("VOS_STORAGE", os.path.abspath("runs")).rstrip("/")
    return storage.join(base, "evaluations", f"evaluate-{stamp}-{os.getpid()}")


def speed_table(outcomes: list[SequenceOutcome], device: str) -> Table:
    """Per sequence: frames, model frames/s, peak memory and the segmenter's state."""
    table = Table(title=f"speed and memory on {device}", box=box.SIMPLE_HEAD)
    table.add_column("sequence", no_wrap=True)
    for column in ("frames", "frames/s", "peak memory MB", "model state MB"):
        table.add_column(column, justify="right")
    for outcome in outcomes:
        if outcome.score is not None:
            table.add_row(
                outcome.name,
                str(outcome.frames),
                f"{outcome.fps:.1f}",
                f"{outcome.peak_memory_bytes / 2**20:.0f}",
                f"{outcome.state_bytes / 2**20:.2f}",
            )
    return table


def print_report(report: Report) -> None:
    if report.scores:
        console.print(results_table(report.scores, f"evaluation of {report.config.model}"))
        console.print(speed_table(report.outcomes, report.device))
    for outcome in report.outcomes:
        if outcome.error:
            console.print(
                f"[red]{outcome.name}: failed: {outcome.error}[/red]",
                soft_wrap=True,
                highlight=False,
            )
    data = report.as_dict()
    if report.error:
        console.print(f"[red]evaluate: {report.error}[/red]", soft_wrap=True, highlight=False)
    line = f"evaluation {data['status']}"
    if "JF_mean" in data:
        line += (
            f": J&F {data['JF_mean']:.3f} (J {data['J_mean']:.3f}, F {data['F_mean']:.3f}), "
            f"{data['fps']:.1f} frames/s, peak memory {data['peak_memory_mb']:.0f} MB "
            f"(model state {data['state_mb']:.2f} MB) on {report.device}"
        )
    console.print(line, highlight=False)


# -- MLflow ---------------------------------------------------------------------------------------


def _worst_frame_images(
    report: Report, masks_url: str, files: dict[str, SequenceFiles]
) -> dict[str, np.ndarray]:
    """Side-by-side overlays (prediction | ground truth) of the frames with the lowest J."""
    worst = sorted(
        (
            item + (score.name,)
            for score in report.scores
            for item in score.worst_frames(report.config.worst_frames)
        ),
        key=lambda item: item[2],
    )[: report.config.worst_frames]
    images = {}
    for frame_name, object_id, j, sequence in worst:
        index = [path.stem for path in files[sequence].frames].index(frame_name)
        frame = read_frame(files[sequence].frames[index])
        truth = read_mask(files[sequence].masks[index])
        with tempfile.NamedTemporaryFile(suffix=".png") as handle:
            handle.write(storage.read_bytes(storage.join(masks_url, sequence, f"{frame_name}.png")))
            handle.flush()
            predicted = read_mask(handle.name)
        picture = np.concatenate([overlay(frame, predicted), overlay(frame, truth)], axis=1)
        images[f"worst_frames/{sequence}_{frame_name}_obj{object_id}_J{j:.3f}.png"] = picture
    return images


def model_source(config: EvaluateConfig) -> tuple[MlflowClient, ModelSource]:
    """The MLflow client and where the model comes from (registry version, training run)."""
    client = MlflowClient(resolve_tracking_uri(config.tracking.uri))
    return client, resolve_model_uri(client, config.model)


SUMMARY_METRICS = (
    "J_mean", "F_mean", "JF_mean", "J_recall", "J_decay", "F_recall", "F_decay",
    "fps", "peak_memory_mb", "state_mb",
)  # fmt: skip


def _open_run(client: MlflowClient, source: ModelSource, report: Report) -> str:
    """A run nested under the model's training run (else in the configured experiment)."""
    config = report.config
    tags = {
        "vos.stage": "evaluate",
        "eval.status": report.status,
        "eval.fingerprint": report.fingerprint,
    }
    if source.run_id and config.tracking.experiment is None:
        experiment_id = client.get_run(source.run_id).info.experiment_id
        tags["mlflow.parentRunId"] = source.run_id
    else:
        name = config.tracking.experiment or "vos-evaluation"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    if source.run_id:
        tags["vos.training_run_id"] = source.run_id
    if source.version:
        tags["vos.model_version"] = f"{source.name}/{source.version}"
    run_name = f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def _log_figures(client: MlflowClient, run_id: str, report: Report, data: dict[str, Any]) -> None:
    """Config as params; summary and per-sequence figures as metrics (batched requests)."""
    now = int(time.time() * 1000)
    params = [Param(key, str(value)[:6000]) for key, value in flatten(report.config).items()]
    metrics = [
        Metric(key, float(data[key]), now, 0)
        for key in SUMMARY_METRICS
        if data.get(key) is not None
    ]
    for name, row in data["sequences"].items():
        metrics += [
            Metric(f"{name}.{key}", float(row[key]), now, 0)
            for key in ("J", "F", "JF", "fps")
            if key in row
        ]
    for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limit
        client.log_batch(
            run_id, metrics=metrics[start : start + 100], params=params[start : start + 100]
        )


def _log_artifacts(
    client: MlflowClient,
    run_id: str,
    report: Report,
    data: dict[str, Any],
    masks_url: str,
    files: list[SequenceFiles],
) -> None:
    """The report, per-frame scores, the table as text and overlays of the worst frames."""
    client.log_dict(run_id, data, "evaluation/report.json")
    if not report.scores:
        return
    per_frame = {
        score.name: {
            str(obj.object_id): {"frames": obj.frames, "J": obj.j_per_frame, "F": obj.f_per_frame}
            for obj in score.objects
        }
        for score in report.scores
    }
    client.log_dict(run_id, per_frame, "evaluation/per_frame.json")
    text = Console(record=True, width=120, file=io.StringIO())
    text.print(results_table(report.scores))
    client.log_text(run_id, text.export_text(), "evaluation/table.txt")
    for artifact, image in _worst_frame_images(
        report, masks_url, {f.name: f for f in files}
    ).items():
        client.log_image(run_id, image, artifact_file=artifact)


def log_to_mlflow(
    report: Report,
    client: MlflowClient,
    source: ModelSource,
    masks_url: str,
    files: list[SequenceFiles],
) -> None:
    """Log the evaluation to its own MLflow run; set the scores as tags on the model version
    (a registry URI) and on the training run (so a version registered from it carries them)."""
    report.run_id = _open_run(client, source, report)
    data = report.as_dict()
    _log_figures(client, report.run_id, report, data)
    _log_artifacts(client, report.run_id, report, data, masks_url, files)
    client.set_terminated(report.run_id, "FINISHED" if report.status == "complete" else "FAILED")
    evaluation = Evaluation(
        status=report.status,
        jf_mean=data.get("JF_mean"),
        j_mean=data.get("J_mean"),
        f_mean=data.get("F_mean"),
        fingerprint=report.fingerprint,
        run_id=report.run_id,
    )
    set_evaluation_tags(client, evaluation, data, source.name, source.version, source.run_id)


# -- the stage ------------------------------------------------------------------------------------


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate `config.model` on `config.data`; returns the report (also written and logged)."""
    files = sequence_files(config)  # a bad layout or an unknown model stops here, before any work
    with pointed_at(resolve_tracking_uri(config.tracking.uri)):  # models:/ and runs:/ too
        return _evaluate(config, files)


def _evaluate(config: EvaluateConfig, files: list[SequenceFiles]) -> dict[str, Any]:
    client, source = model_source(config) if config.tracking.log else (None, None)
    fingerprint = fingerprint_of(files, config.resolution)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = config.out or default_out(config)
    masks_url = storage.join(out, "masks")
    storage.check_storage(out)
    report = Report(config=config, fingerprint=fingerprint, device=device)
    try:
        net = load_model(config.model, device=device)
    except Exception as err:  # recorded as a failed evaluation, never as a score
        report.error = f"cannot load model {config.model}: {describe_error(err)}"
    else:
        report.outcomes = evaluate_sequences(net, config, files, device, masks_url)
    if config.tracking.log:
        log_to_mlflow(report, client, source, masks_url, files)
    data = report.as_dict()
    storage.write_bytes_atomic(
        storage.join(out, "report.json"), json.dumps(data, indent=2).encode()
    )
    print_report(report)
    console.print(f"report and masks in {out}", highlight=False)
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vos evaluate",
        description="Segment every sequence of a DAVIS-layout folder with a model, score J&F, "
        "measure speed and memory, and record the report in MLflow.",
    )
    parser.add_argument("--config", help="YAML config (see configs/evaluate_tiny.yaml)")
    parser.add_argument(
        "--model", help="models:/gc-vos@champion, runs:/<id>/model, a checkpoint or .pt"
    )
    parser.add_argument("--data", help="DAVIS root: a folder or an s3:// URL")
    parser.add_argument("--json", help="also write the report to this local JSON file")
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides (e.g. resolution=0.25)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {"model": args.model, "data": args.data}
    overrides = [
        *args.overrides,
        *(f"{key}={json.dumps(value)}" for key, value in flags.items() if value),
    ]
    try:
        config = load_config(EvaluateConfig, args.config, overrides)
        report = run(config)
    except (ConfigError, DavisLayoutError, RegistryError, storage.StorageError, ValueError) as err:
        console.print(f"[red]evaluate: {err}[/red]", soft_wrap=True, highlight=False)
        return 1
    except MlflowException as err:
        console.print(
            f"[red]evaluate: MLflow: {err.message.splitlines()[0]}[/red]", highlight=False
        )
        return 1
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
