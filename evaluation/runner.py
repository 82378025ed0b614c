"""Running a model over DAVIS-layout sequences: masks written as they come, scored with the
DAVIS measures, model time and peak memory measured per sequence, in this process or spread
over Ray tasks. A failed sequence is recorded and reported, never lost with the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from rich import box
from rich.table import Table

from core import cluster, storage
from core.cli import console, progress_bar
from core.config import StrictModel
from core.masks import MaskError, encode_mask, list_frames, read_frame, read_mask
from evaluation.folders import DavisLayoutError, sequence_names
from evaluation.metrics import FrameError, SequenceScore, SequenceScorer, summarize
from evaluation.report import results_table
from evaluation.segment import RESOLUTION_HELP, check_resolution, segment_video


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
    resolution: str | float = Field("model", description=f"model input size: {RESOLUTION_HELP}")
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


def evaluate_sequences(
    net, config: EvaluateConfig, files: list[SequenceFiles], device: str, masks_url: str
) -> list[SequenceOutcome]:
    """Every sequence, in this process or spread over Ray tasks (`workers` at a time)."""
    if config.workers == 1 or len(files) == 1:
        outcomes = []
        with progress_bar() as progress:
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

    cluster.connect(config.cluster_address)
    remote = ray.remote(_remote_evaluate_sequence).options(
        num_cpus=config.cpus_per_worker,
        num_gpus=1 if device.startswith("cuda") else 0,
        runtime_env=cluster.runtime_env(),
        max_retries=1,
    )
    net_ref = ray.put(net.cpu())
    worker_device = "cuda" if device.startswith("cuda") else "cpu"

    def submit(sequence: SequenceFiles):
        return remote.remote(
            net_ref,
            sequence,
            config.data,
            config.resolution,
            worker_device,
            masks_url,
            config.cpus_per_worker,
        )

    done = {}
    with progress_bar() as progress:
        task = progress.add_task(f"evaluating on {config.workers} Ray workers", total=len(files))
        for sequence, ref in cluster.as_completed(submit, files, config.workers):
            try:
                done[sequence.name] = ray.get(ref)
            except Exception as err:  # the task itself died (worker lost): the sequence failed
                done[sequence.name] = SequenceOutcome(sequence.name, error=describe_error(err))
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
