"""The config of the training stages (`pipelines/pretrain.py`, `pipelines/finetune.py`).

A training config has these sections (YAML; every key is checked, unknown keys are errors):

    run        name, storage_path, checkpoint_every_steps, keep_checkpoints, max_failures
    model      name (gc | gvos_scm | stm), size (tiny | full), pretrained_backbone, options
    data       manifests (+ weights), batch_size per worker, loader_workers, shuffle_buffer, ...
    train      epochs, max_steps, lr, weight_decay, grad_clip_norm, log_every_steps
    compute    num_workers, use_gpu, cpus/gpus per worker, precision (fp32 | bf16), compile
    cluster    address (None: RAY_ADDRESS, else a Ray started on this machine)
    tracking   uri (None: MLFLOW_TRACKING_URI), experiment

Fine-tuning adds `init` (where the weights come from) and `curriculum` (the frame-skip
schedule). Rules that span sections (one weight per manifest, curricula that only grow, ...)
are checked here too, so a bad config fails in one line before Ray is touched. What only a
worker can know is checked when it starts (bf16 on a CPU needs AVX-512 BF16 or AMX:
`training.loop.check_precision`).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from core.config import StrictModel
from core.storage import is_local, local_path

__all__ = [
    "ClusterSection",
    "ComputeSection",
    "CurriculumSection",
    "DataSection",
    "FinetuneConfig",
    "InitSection",
    "ModelSection",
    "PretrainConfig",
    "RunSection",
    "TrackingSection",
    "TrainConfig",
    "TrainSection",
    "default_storage_path",
]

ModelName = Literal["gc", "gvos_scm", "stm"]

# Registered model name of each architecture in the MLflow registry (see docs/interfaces.md).
REGISTERED_MODEL_NAMES: dict[str, str] = {
    "gc": "gc-vos",
    "gvos_scm": "gvos-scm-vos",
    "stm": "stm-vos",
}


def config_rule_error(message: str) -> PydanticCustomError:
    """The pydantic error a validator raises for a broken config rule; `load_config` reports it
    as `<key> = <value>: <message>`."""
    return PydanticCustomError("config_rule", message)


def absolute_if_local(url: str) -> str:
    """Local paths become absolute here, in the driver: workers run in other folders."""
    return local_path(url) if is_local(url) else url


def default_storage_path() -> str:
    """Where runs go when the config names no place: the local stack's storage, else ~/vos-runs
    (not the working folder: under `ray job submit` that is a temporary copy)."""
    storage = os.environ.get("VOS_STORAGE")
    if storage:
        return absolute_if_local(storage.rstrip("/") + "/runs")
    return os.path.expanduser("~/vos-runs")


class RunSection(StrictModel):
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="run name; a rerun with the same name resumes from its newest readable "
        "checkpoint, and is refused once the run is finished (default: a new unique name)",
    )
    storage_path: str | None = Field(
        None,
        description="local path, file:// or s3:// URL (default: $VOS_STORAGE/runs or ~/vos-runs)",
    )
    checkpoint_every_steps: int = Field(1000, gt=0)
    keep_checkpoints: int = Field(3, gt=0, description="keep the last K checkpoints")
    max_failures: int = Field(3, ge=-1, description="worker failures to recover from (-1: always)")
    record_sample_keys: bool = Field(
        False, description="write the clip keys each rank read per epoch under the run folder"
    )

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage_path(cls, value: str | None) -> str | None:
        return absolute_if_local(value) if value else value


class ModelSection(StrictModel):
    name: ModelName
    size: Literal["tiny", "full"] = "full"
    pretrained_backbone: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="extra build_model arguments")

    @property
    def registered_name(self) -> str:
        return REGISTERED_MODEL_NAMES[self.name]


class DataSection(StrictModel):
    """What a run trains on and how it is read (see `datagen.reader`): video windows give a
    fresh clip every epoch, every clip is flipped, colour- and crop-jittered in the DataLoader
    workers, and every shard is checked against its manifest as it is read."""

    manifests: list[str] = Field(min_length=1, description="manifest.json URLs of shard sets")
    weights: list[float] | None = Field(None, description="mixing weight of each manifest")
    batch_size: int = Field(4, gt=0, description="clips per step on each worker")
    loader_workers: int = Field(4, ge=0, description="DataLoader processes per worker (decoding)")
    prefetch_factor: int = Field(2, gt=0)
    shuffle_buffer: int = Field(1000, ge=0)
    max_objects: int = Field(3, gt=0)
    seed: int = 0
    flip: bool = Field(True, description="flip half of the clips horizontally")
    colour_jitter: float = Field(
        0.2, ge=0, lt=1, description="brightness, contrast, saturation each x U(1 -+ this)"
    )
    crop_jitter: float = Field(
        0.05, ge=0, le=0.25, description="each frame's crop moves by up to this x clip size"
    )
    verify_shards: bool = Field(
        True, description="hash every shard as it is read and compare it with its manifest"
    )
    bad_shards: Literal["stop", "skip"] = Field(
        "stop",
        description="a shard that does not match its manifest: stop the run (one line naming "
        "it), or skip it and count it; either way its samples read before the end-of-shard "
        "hash check have been trained on",
    )

    @field_validator("manifests")
    @classmethod
    def _absolute_manifests(cls, value: list[str]) -> list[str]:
        return [absolute_if_local(url) for url in value]

    @field_validator("weights")
    @classmethod
    def _one_weight_per_manifest(cls, value: list[float] | None, info: ValidationInfo):
        manifests = info.data.get("manifests")
        if value is None or manifests is None:
            return value
        if len(value) != len(manifests):
            raise config_rule_error(
                f"{len(value)} weights for {len(manifests)} manifests; give one per manifest"
            )
        if any(weight <= 0 for weight in value):
            raise config_rule_error("every weight must be > 0")
        return value


class TrainSection(StrictModel):
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps in all")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="cosine: from lr down to lr x final_lr_fraction over the run's planned "
        "steps (max_steps, or epochs x steps per epoch)",
    )
    final_lr_fraction: float = Field(0.1, ge=0, le=1, description="cosine: the last step's lr / lr")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from lr / warmup_steps")
    grad_clip_norm: float | None = Field(1.0, gt=0, description="None: no clipping")
    log_every_steps: int = Field(10, gt=0)
    freeze_batchnorm: bool = Field(
        True,
        description="the papers' frozen batch norm (from ImageNet weights); false for a model "
        "trained from scratch, whose batch norm must learn",
    )


class ComputeSection(StrictModel):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (one per GPU on GPUs)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="used only with use_gpu")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker (e.g. accelerator labels)"
    )
    # bf16 autocast: on GPUs, and on CPUs with AVX-512 BF16 / AMX (oneDNN), where one tiny
    # gc training step took 0.41 s against 0.92 in fp32 (benchmarks/RESULTS.md, "Learning").
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    find_unused_parameters: bool = False

    def ray_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker, **self.resources_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources


class ClusterSection(StrictModel):
    address: str | None = Field(
        None, description="Ray address; None: RAY_ADDRESS, else start Ray on this machine"
    )


class TrackingSection(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI; None: MLFLOW_TRACKING_URI")
    experiment: str = Field("vos", min_length=1)


class CurriculumSection(StrictModel):
    """Frame-skip curriculum: the largest gap between sampled frames grows during fine-tuning.

    max_skip(epoch) = min(initial_max_skip + (epoch // grow_every_epochs) * grow_by,
                          final_max_skip)

    Gaps are counted in raw video frames, annotated or not, as the papers count them: on
    YouTube-VOS (annotated every 5th frame) max_skip 25 reaches 5 annotated frames ahead, and
    a max_skip under 5 still takes the next annotated frame. The reader draws each epoch's
    clips from the video windows with gaps up to that epoch's value; the windows hold gaps up
    to the generator's clips.max_skip.
    """

    initial_max_skip: int = Field(3, gt=0)
    final_max_skip: int = Field(3, gt=0)
    grow_every_epochs: int = Field(10, gt=0)
    grow_by: int = Field(5, gt=0)

    @field_validator("final_max_skip")
    @classmethod
    def _final_not_below_initial(cls, value: int, info: ValidationInfo) -> int:
        initial = info.data.get("initial_max_skip")
        if initial is not None and value < initial:
            raise config_rule_error(f"must be >= curriculum.initial_max_skip ({initial})")
        return value

    def max_skip(self, epoch: int) -> int:
        grown = self.initial_max_skip + (epoch // self.grow_every_epochs) * self.grow_by
        return min(grown, self.final_max_skip)


class InitSection(StrictModel):
    model_uri: str = Field(
        min_length=1,
        description="weights to start from: models:/name@alias, models:/name/version, "
        "runs:/id/model, a checkpoint folder/URL or a .pt file",
    )

    @field_validator("model_uri")
    @classmethod
    def _absolute_model_path(cls, value: str) -> str:
        return value if value.startswith(("models:/", "runs:/")) else absolute_if_local(value)


class TrainConfig(StrictModel):
    """What both training stages share."""

    stage: Literal["pretrain", "finetune"]
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    init: InitSection | None = None
    curriculum: CurriculumSection | None = None

    def run_name(self) -> str:
        """The configured name, or a new unique one: `<stage>-<model>-<timestamp>-<uuid>`."""
        if self.run.name:
            return self.run.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"{self.stage}-{self.model.name}-{stamp}-{uuid.uuid4().hex[:6]}"

    def storage_path(self) -> str:
        return self.run.storage_path or default_storage_path()

    def max_skip(self, epoch: int) -> int | None:
        """The largest gap, in raw video frames, between the frames of `epoch`'s clips (None:
        no curriculum; clips drawn from video windows then use the windows' whole range)."""
        return self.curriculum.max_skip(epoch) if self.curriculum else None


class PretrainConfig(TrainConfig):
    """Pre-training on synthetic clips (Adam, lr 1e-5 in both papers)."""

    stage: Literal["pretrain"] = "pretrain"

    @field_validator("init", "curriculum")
    @classmethod
    def _no_finetune_sections(cls, value: Any) -> None:
        if value is not None:
            raise config_rule_error(
                "pretraining starts from scratch on image clips; use pipelines/finetune.py"
            )
        return value


class FinetuneConfig(TrainConfig):
    """Fine-tuning on video clips from a pretrained model, with the frame-skip curriculum."""

    stage: Literal["finetune"] = "finetune"
    init: InitSection
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection)
    train: TrainSection = Field(default_factory=lambda: TrainSection(lr=1e-6))
