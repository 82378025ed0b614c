"""Evaluating a model (a registry version, a run's model or a file) and recording the result.

Each evaluation is an MLflow run of its own, nested under the model's training run when there
is one, opened before the model runs and never left RUNNING: it ends FINISHED when the
evaluation is complete, FAILED when partial, failed or broken off by an error, and KILLED on
SIGTERM or Ctrl-C. It holds the config as params, the summary and per-sequence figures as
metrics, the report, per-frame scores, the table and overlays of the worst frames as
artifacts, and the evaluation set as a dataset input (its data URL, the fingerprint as
digest). The summary is also logged against the logged model and that dataset, so the
model's page lists its scores per evaluation set; and the score is tagged on the version and
the training run under the set's name (`registry.versions.record_score`).
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from typing import Any

import numpy as np
import torch
from mlflow.entities import DatasetInput, LoggedModelInput, Metric, Param
from mlflow.tracking import MlflowClient
from rich.console import Console

from core import storage
from core.cli import console, utc_timestamp
from core.config import flatten
from core.masks import overlay, read_frame, read_mask
from evaluation.report import results_table
from evaluation.runner import (
    EvaluateConfig,
    Report,
    SequenceFiles,
    default_out,
    describe_error,
    evaluate_sequences,
    fingerprint_of,
    print_report,
    sequence_files,
)
from evaluation.segment import resolve_device
from registry.versions import (
    ModelSource,
    Score,
    evaluation_set_name,
    record_score,
    resolve_model_uri,
)
from tracking import runs
from tracking.model_store import load_model

SUMMARY_METRICS = (
    "J_mean", "F_mean", "JF_mean", "J_recall", "J_decay", "F_recall", "F_decay",
    "fps", "peak_memory_mb", "state_mb",
)  # fmt: skip
MODEL_METRICS = ("JF_mean", "J_mean", "F_mean")  # logged against the logged model too
DEFAULT_EXPERIMENT = "vos-evaluation"


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
    client = MlflowClient(runs.resolve_tracking_uri(config.tracking.uri))
    return client, resolve_model_uri(client, config.model)


def evaluation_dataset(
    config: EvaluateConfig, files: list[SequenceFiles], fingerprint: str
) -> DatasetInput:
    """The evaluation set as an MLflow dataset: named like its scores' tags, the fingerprint
    as digest, the sequences, frame count and input resolution as profile."""
    profile = {
        "sequences": [sequence.name for sequence in files],
        "frames": sum(len(sequence.frames) for sequence in files),
        "annotations": config.annotations,
        "resolution": config.resolution,
        "fingerprint": fingerprint,
    }
    name = evaluation_set_name(config.data, fingerprint)
    return runs.dataset_input(config.data, name, fingerprint, profile, context="evaluation")


def _open_run(
    client: MlflowClient, source: ModelSource, report: Report, dataset: DatasetInput
) -> str:
    """A RUNNING run nested under the model's training run (else in the configured
    experiment). The caller enters `closed_on_exit` straight after, before any other call
    to the server (`_log_inputs`), so a SIGTERM from then on marks it KILLED."""
    config = report.config
    tags = {
        "vos.stage": "evaluate",
        "eval.set": dataset.dataset.name,
        "eval.fingerprint": report.fingerprint,
    }
    if source.run_id and config.tracking.experiment is None:
        experiment_id = client.get_run(source.run_id).info.experiment_id
        tags["mlflow.parentRunId"] = source.run_id
    else:
        experiment_id = runs.experiment_id(client, config.tracking.experiment or DEFAULT_EXPERIMENT)
    if source.run_id:
        tags["vos.training_run_id"] = source.run_id
    if source.version:
        tags["vos.model_version"] = f"{source.name}/{source.version}"
    run_name = f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def _log_inputs(
    client: MlflowClient, run_id: str, source: ModelSource, dataset: DatasetInput
) -> None:
    """The evaluation set (and the logged model) as the run's inputs."""
    models = [LoggedModelInput(source.model_id)] if source.model_id else None
    client.log_inputs(run_id, datasets=[dataset], models=models)


def _log_figures(
    client: MlflowClient,
    report: Report,
    data: dict[str, Any],
    dataset: DatasetInput,
    model_id: str | None,
) -> None:
    """Config as params; summary and per-sequence figures as metrics, the summary's J&F, J and
    F against the logged model and the evaluation set (one log_batch: MLflow splits it)."""
    now = int(time.time() * 1000)
    params = [Param(key, runs.param_value(value)) for key, value in flatten(report.config).items()]
    metrics = [
        Metric(key, float(data[key]), now, 0)
        for key in SUMMARY_METRICS
        if data.get(key) is not None and not (model_id and key in MODEL_METRICS)
    ]
    if model_id:
        metrics += [
            Metric(
                key,
                float(data[key]),
                now,
                0,
                model_id=model_id,
                dataset_name=dataset.dataset.name,
                dataset_digest=dataset.dataset.digest,
            )
            for key in MODEL_METRICS
            if data.get(key) is not None
        ]
    for name, row in data["sequences"].items():
        metrics += [
            Metric(f"{name}.{key}", float(row[key]), now, 0)
            for key in ("J", "F", "JF", "fps")
            if key in row
        ]
    client.log_batch(report.run_id, metrics=metrics, params=params)


def _log_artifacts(
    client: MlflowClient,
    report: Report,
    data: dict[str, Any],
    masks_url: str,
    files: list[SequenceFiles],
) -> None:
    """The report, per-frame scores, the table as text and overlays of the worst frames."""
    run_id = report.run_id
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
    dataset: DatasetInput,
    masks_url: str,
    files: list[SequenceFiles],
) -> None:
    """Log the finished evaluation to its run and close it; record the score on the version
    (a registry URI) and on the training run (a version registered from it carries it)."""
    data = report.as_dict()
    _log_figures(client, report, data, dataset, source.model_id)
    _log_artifacts(client, report, data, masks_url, files)
    client.set_tag(report.run_id, "eval.status", report.status)
    score = Score(
        set_name=dataset.dataset.name,
        status=report.status,
        jf_mean=data.get("JF_mean"),
        run_id=report.run_id,
        at=utc_timestamp(),
    )
    record_score(client, score, source.name, source.version, source.run_id)
    client.set_terminated(report.run_id, "FINISHED" if report.status == "complete" else "FAILED")


# -- the stage ------------------------------------------------------------------------------------


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate `config.model` on `config.data`; returns the report (also written and logged)."""
    files = sequence_files(config)  # a bad layout or an unknown model stops here, before any work
    if not (config.tracking.log or config.model.startswith(("models:/", "runs:/"))):
        return _evaluate(config, files)
    with runs.pointed_at(runs.resolve_tracking_uri(config.tracking.uri)):  # models:/, runs:/
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
    if client is None:
        _run_model(report, files, device, masks_url)
    else:
        dataset = evaluation_dataset(config, files, fingerprint)
        report.run_id = _open_run(client, source, report, dataset)
        with runs.closed_on_exit(client, report.run_id):
            _log_inputs(client, report.run_id, source, dataset)
            _run_model(report, files, device, masks_url)
            log_to_mlflow(report, client, source, dataset, masks_url, files)
    data = report.as_dict()
    storage.write_bytes_atomic(
        storage.join(out, "report.json"), json.dumps(data, indent=2).encode()
    )
    print_report(report)
    console.print(f"report and masks in {out}", highlight=False)
    return data


def _run_model(report: Report, files: list[SequenceFiles], device: str, masks_url: str) -> None:
    """Segment and score every sequence; a model that does not load is a failed evaluation."""
    config = report.config
    try:
        net = load_model(config.model, device=device)
    except Exception as err:  # recorded as a failed evaluation, never as a score
        report.error = f"cannot load model {config.model}: {describe_error(err)}"
    else:
        report.outcomes = evaluate_sequences(net, config, files, device, masks_url)
