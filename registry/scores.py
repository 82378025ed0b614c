"""Evaluating a model (a registry version, a run's model or a file) and recording the report:
its own MLflow run nested under the training run, per-sequence scores and overlays of the
worst frames, and the scores as `eval.*` tags on the version and the training run.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from rich.console import Console

from core import storage
from core.config import flatten
from core.masks import overlay, read_frame, read_mask
from evaluation.report import results_table
from evaluation.runner import (
    EvaluateConfig,
    Report,
    SequenceFiles,
    console,
    default_out,
    describe_error,
    evaluate_sequences,
    fingerprint_of,
    print_report,
    sequence_files,
)
from evaluation.segment import resolve_device
from registry.versions import (
    Evaluation,
    ModelSource,
    resolve_model_uri,
    set_evaluation_tags,
)
from tracking.model_store import load_model
from tracking.runs import pointed_at, resolve_tracking_uri


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
