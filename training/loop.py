"""The training loop that every Ray Train worker runs (one copy per rank).

One step follows both papers: the model encodes frame 0 with its mask, predicts frame 1,
puts its own *soft* frame-1 prediction into memory and predicts frame 2 (the model does this
inside `model(frames, first_labels, num_objects)`); the loss is taken on frames 1 and 2
(cross-entropy for gc and stm, hybrid BCE + SSIM + IoU plus cross-entropy for gvos_scm; the
model's `loss`). Adam (fused) at a constant lr as both papers, or with a warm-up and a cosine
decay (`train.lr_schedule`, for short runs from scratch; the lr of every step is a function
of the step, so a resumed run continues its curve), gradient clipping, batch norm frozen (the
model keeps it frozen in `train()`), bf16 autocast (GPUs, and CPUs with AVX-512 BF16 or AMX:
`check_precision`) and channels_last as options, `torch.compile` as an option.

`train_loop_per_worker` reads as Ray Train's examples do: set up (restore or start, the
network, DDP through `ray.train.torch.prepare_model`, the optimizer), then for each epoch, for
each batch: check it, step, log, checkpoint. `model` is the bare network (its loss, its
checkpoints); `ddp_model` is the same network wrapped for DDP (the forward pass).

Data. Each rank streams its own share of the shards with `datagen.reader.ClipStream(rank,
world_size)` through a torch DataLoader whose worker processes read and decode the clips.
Every rank runs exactly `min over ranks(samples_per_rank // batch_size)` steps per epoch
(agreed with one all-reduce), and every step has exactly `batch_size` clips (`exact_batches`
merges the short batches each DataLoader worker ends with), so DDP never waits at an
epoch's end for a rank that has run out. A WebDataset DataLoader rather than Ray Data: on the
same shards it delivered more clips/s and it decodes in the training worker's own processes,
asking the cluster for no extra CPUs (figures: benchmarks/RESULTS.md).

No step reads the device. The model checks shapes and dtypes only; the values (frames
finite and in [0, 1], labels in 0..num_objects) are checked by `check_batch` on the CPU batch,
before it moves to the device. Losses stay on the device until a progress line is due (every
`train.log_every_steps`): then one read fetches the window's losses.

Metrics. Rank 0 logs per-step metrics to MLflow and prints one progress line per window
(step, loss, clips/s, data wait, ETA). Each step is logged once over all attempts of a run:
MLflow's metric history is append-only, so an attempt that re-runs steps after a restore skips
those MLflow holds already (`StepMetrics`).

Checkpoints (every `run.checkpoint_every_steps` and at the end) hold `model.pt` (see
`tracking.model_store`, so `load_model(<checkpoint>)` works) and `train_state.pt` (optimizer
state, global step, epoch, step within the epoch). A retried worker group, or a rerun with
the same run name, restarts from the newest checkpoint that can be read: the step counter and
the optimizer state carry on. A checkpoint that cannot be read (a truncated file, say) is
named in one warning and skipped; rank 0 picks the checkpoint and every rank loads that one.
An epoch interrupted mid-way is finished with its remaining number of steps from a fresh pass
over that epoch's stream (its order is not replayed clip for clip).
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import ray.train
import ray.train.collective
import ray.train.torch
import torch
import torch.distributed as dist
from mlflow.tracking import MlflowClient

from core import storage
from datagen.manifest import read_manifest
from models import build_model
from tracking import model_store
from tracking.runs import MetricBuffer
from training.config import FinetuneConfig, PretrainConfig, TrainConfig, TrainSection
from training.data import (
    DistinctClips,
    batch_size_of,
    clip_stream,
    epoch_loader,
    exact_batches,
)

if TYPE_CHECKING:
    from datagen.reader import ClipStream

__all__ = [
    "TRAIN_STATE_FILE",
    "TrainState",
    "check_batch",
    "exact_batches",
    "run_is_complete",
    "train_loop_per_worker",
    "train_step",
]

TRAIN_STATE_FILE = "train_state.pt"
CHECKPOINT_NAME = re.compile(r"^checkpoint-step-(\d+)(?:-(\d+))?$")
LOSS_METRIC = "train/loss"

log = logging.getLogger("vos.train")


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken in the whole run, over all attempts
    epoch: int = 0
    step_in_epoch: int = 0

    def advance(self, steps_in_epoch: int) -> None:
        """One step done; after an epoch's last step the state is at the next epoch's start
        (so a checkpoint there resumes with the next epoch, and the run's last one says done)."""
        self.step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch >= steps_in_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0


def run_is_complete(config: TrainConfig, state: TrainState) -> bool:
    """Whether `state` is the end of the run `config` describes (every epoch, or max_steps)."""
    max_steps = config.train.max_steps
    return state.epoch >= config.train.epochs or (max_steps is not None and state.step >= max_steps)


@dataclass
class WorkerContext:
    """What this worker needs to know about its place in the run."""

    rank: int
    world_size: int
    device: torch.device
    run_dir: str
    tracking_uri: str | None
    mlflow_run_id: str | None

    @classmethod
    def current(cls, loop_config: dict[str, Any]) -> WorkerContext:
        context = ray.train.get_context()
        return cls(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
            run_dir=loop_config["run_dir"],
            tracking_uri=loop_config.get("tracking_uri"),
            mlflow_run_id=loop_config.get("mlflow_run_id"),
        )

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def log_on_rank0(worker: WorkerContext, message: str) -> None:
    """One line in the job's log, from rank 0 only (the others would repeat it)."""
    if worker.is_rank0:
        log.info(message)


# -- the loop -----------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Entry point given to `TorchTrainer`; `loop_config` is built by `training.driver`.

    Returns the final metrics (rank 0's reach the driver as the result's return value).
    """
    config = parse_config(loop_config["config"])
    worker = WorkerContext.current(loop_config)
    if worker.tracking_uri:  # for init.model_uri = models:/... or runs:/...
        mlflow.set_tracking_uri(worker.tracking_uri)
    check_precision(config.compute.precision, worker.device)
    use_allotted_cpus(config, worker.device)
    torch.manual_seed(config.data.seed)

    model, optimizer, state, checkpoints = restore_or_start(config, worker)
    ddp_model = prepare(model, config)
    progress = Progress(config, worker, optimizer, StepMetrics.for_worker(worker), state.step)
    bf16 = config.compute.precision == "bf16"

    model.train()
    for epoch in range(state.epoch, config.train.epochs):
        if run_is_complete(config, state):
            break
        stream = clip_stream(config, worker.rank, worker.world_size, epoch)
        steps_in_epoch = agreed_steps_in_epoch(config, stream, worker, epoch)
        if epoch != state.epoch:  # a checkpoint written before `advance` moved epochs on
            state = TrainState(step=state.step, epoch=epoch)
        total_steps = planned_total_steps(config, steps_in_epoch)
        progress.start_epoch(epoch, total_steps)
        keys: list[str] = []
        for batch in progress.timed(epoch_batches(config, stream, worker, state, steps_in_epoch)):
            num_objects = check_batch(batch)  # on the CPU, before the batch moves
            frames, labels = to_device(batch, worker.device)
            set_lr(optimizer, lr_at(config.train, state.step, total_steps))
            loss = train_step(
                ddp_model, model, optimizer, frames, labels, num_objects,
                bf16=bf16, grad_clip_norm=config.train.grad_clip_norm,
            )  # fmt: skip
            state.advance(steps_in_epoch)
            progress.distinct_clips.add(batch)
            keys += batch["clip"]  # the sample key, and a window's frame indices
            progress.add(state.step, loss, clips=batch_size_of(batch))
            if state.step % config.train.log_every_steps == 0:
                progress.end_window(state.step)
            if state.step % config.run.checkpoint_every_steps == 0:
                checkpoints.save(model, optimizer, state, progress.summary(state))
        progress.end_window(state.step)
        if stream.skipped_shards():
            log_on_rank0(worker, f"epoch {epoch}: {stream.skipped_shards()} bad shards skipped")
        if config.run.record_sample_keys:
            record_keys(worker, epoch, keys)

    if state.step != checkpoints.saved_step:
        checkpoints.save(model, optimizer, state, progress.summary(state))
    progress.flush()
    log_on_rank0(worker, f"done: {state.step} steps, last loss {progress.last_loss:.4f}")
    return progress.summary(state)


def parse_config(data: dict[str, Any]) -> TrainConfig:
    schema = FinetuneConfig if data.get("stage") == "finetune" else PretrainConfig
    return schema.model_validate(data)


# -- one step -----------------------------------------------------------------------------------


def check_batch(batch: dict[str, Any]) -> int:
    """Check the values of a batch on the CPU; returns its object count (the largest
    `num_objects`). A bad clip is named in one line (ValueError).

    Frames must be finite and in [0, 1], each clip's labels in 0..its `num_objects`. These
    checks read every value, which is cheap here and would stall the device in the step.
    """
    keys, counts = batch["key"], batch["num_objects"]
    low, high = per_clip_range(batch["frames"])
    bad = ~((low >= 0) & (high <= 1))  # NaN fails both comparisons
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"clip {keys[index]}: frames must be finite and in [0, 1], got values in "
            f"[{low[index]:.3g}, {high[index]:.3g}]"
        )
    low, high = per_clip_range(batch["labels"])
    bad = (low < 0) | (high > counts)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"clip {keys[index]}: labels must be in 0..{int(counts[index])} (num_objects), "
            f"got values in {int(low[index])}..{int(high[index])}"
        )
    return int(counts.max())


def per_clip_range(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's smallest and largest value (NaN when it holds one). Two passes: `aminmax`
    along a dimension is many times slower on CPUs than `amin` and `amax` (torch 2.15)."""
    flat = values.flatten(1)
    return flat.amin(dim=1), flat.amax(dim=1)


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's frames and labels on `device` (asynchronous from pinned memory)."""
    return (
        batch["frames"].to(device, non_blocking=True),
        batch["labels"].to(device, non_blocking=True),
    )


def bf16_runs_on(device: torch.device) -> bool:
    """Whether `device` has bf16 kernels for autocast: any CUDA GPU, or a CPU whose oneDNN
    has them (AVX-512 BF16 or AMX)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def use_allotted_cpus(config: TrainConfig, device: torch.device) -> None:
    """On a CPU worker, run torch's compute on as many threads as the worker's CPUs.

    torch otherwise starts one thread per core of the machine in every worker (Ray does not
    set OMP_NUM_THREADS for them): N workers on N cores then run N*N threads that fight for
    the cores (figures: benchmarks/RESULTS.md, "Learning").
    """
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.compute.cpus_per_worker)))


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, a bf16 run on a device without bf16 kernels."""
    if precision == "bf16" and not bf16_runs_on(device):
        raise ValueError(
            f"compute.precision = bf16: this worker's {device.type} has no bf16 kernels "
            "(a CPU needs AVX-512 BF16 or AMX); use fp32 or a GPU"
        )


def train_step(
    ddp_model: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    labels: torch.Tensor,
    num_objects: int,
    bf16: bool = False,
    grad_clip_norm: float | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch of 3-frame clips on the device; returns the loss
    (detached, still on the device).

    Reads nothing back from the device (no `.item()`, no truth value of a tensor), so the host
    queues the next step while the device runs this one. The forward pass goes through
    `ddp_model` (`model` wrapped for DDP, or `model` itself) so that gradients are averaged
    over the ranks; the loss is the bare `model`'s.
    """
    with torch.autocast(device_type=frames.device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = ddp_model(frames, labels[:, 0], num_objects)
        loss = model.loss(prediction, labels[:, 1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return loss.detach()


# -- setup: restore or start --------------------------------------------------------------------


def restore_or_start(
    config: TrainConfig, worker: WorkerContext
) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainState, Checkpoints]:
    """The network, its optimizer and the run's state from the newest readable checkpoint of
    this run, or a fresh start when the run has none.

    Rank 0 tries the run's checkpoints newest first and warns about each it cannot read; every
    other rank then loads the one rank 0 picked, so all ranks start from the same step.
    """
    reported = reported_checkpoints()
    index, loaded = (None, None)
    if worker.is_rank0:
        index, loaded = newest_readable(reported, worker.device)
    index = ray.train.collective.broadcast_from_rank_zero(index)
    checkpoints = Checkpoints(worker, taken={checkpoint_name(c) for c in reported})
    if reported and index is None:
        raise RuntimeError(
            f"none of the {len(reported)} checkpoints of {worker.run_dir} can be read "
            "(see the warnings above); start a new run (another run.name)"
        )
    if index is None:
        model = initial_model(config, worker.rank).to(worker.device)
        model.freeze_batchnorm(config.train.freeze_batchnorm)
        return model, make_optimizer(config, model), TrainState(), checkpoints
    model, saved = loaded or read_checkpoint(reported[index], worker.device)
    model.freeze_batchnorm(config.train.freeze_batchnorm)  # before the optimizer takes its params
    optimizer = make_optimizer(config, model)
    optimizer.load_state_dict(saved["optimizer"])  # its lr is replaced at every step (lr_at)
    state = TrainState(**saved["state"])
    checkpoints.saved_step = state.step
    name = checkpoint_name(reported[index])
    log_on_rank0(worker, f"resuming at step {state.step} (epoch {state.epoch}) from {name}")
    return model, optimizer, state, checkpoints


def reported_checkpoints() -> list[ray.train.Checkpoint]:
    """This run's checkpoints that Ray Train holds, newest first (none on a fresh start)."""
    if ray.train.get_checkpoint() is None:
        return []
    return [reported.checkpoint for reported in reversed(ray.train.get_all_reported_checkpoints())]


def newest_readable(
    checkpoints: list[ray.train.Checkpoint], device: torch.device
) -> tuple[int | None, tuple[torch.nn.Module, dict[str, Any]] | None]:
    """The index and contents of the first checkpoint that can be read; warns about the others."""
    for index, checkpoint in enumerate(checkpoints):
        try:
            return index, read_checkpoint(checkpoint, device)
        except Exception as err:  # noqa: BLE001 - any failure to read sets the checkpoint aside
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            log.warning(
                "checkpoint %s cannot be read, skipped (%s)", checkpoint_name(checkpoint), reason
            )
    return None, None


def read_checkpoint(
    checkpoint: ray.train.Checkpoint, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network and the saved train state (optimizer state, `TrainState`) of a checkpoint."""
    with checkpoint.as_directory() as folder:
        model = model_store.load_model(folder, device=device)
        saved = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    return model, saved


def checkpoint_name(checkpoint: ray.train.Checkpoint) -> str:
    return Path(checkpoint.path).name


def initial_model(config: TrainConfig, rank: int) -> torch.nn.Module:
    """Pretraining builds the network; fine-tuning loads the one it starts from.

    Only rank 0 fetches ImageNet backbone weights: DDP copies rank 0's parameters and buffers
    to every other rank when it wraps the network.
    """
    clip_size = int(read_manifest(config.data.manifests[0])["clip"]["size"])
    if config.init is None:
        return build_model(
            config.model.name,
            size=config.model.size,
            pretrained_backbone=config.model.pretrained_backbone and rank == 0,
            **{"train_size": clip_size, **config.model.options},
        )
    model = model_store.load_model(config.init.model_uri).record_train_size(clip_size)
    arch = model.config.get("name", config.model.name)
    if arch != config.model.name:
        raise ValueError(
            f"init.model_uri {config.init.model_uri} is a {arch!r} model but model.name is "
            f"{config.model.name!r}"
        )
    return model


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam over the trainable parameters, fused: one kernel for all of them, and none of the
    default implementation's `.item()` of each parameter's step counter."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(
        trainable, lr=config.train.lr, weight_decay=config.train.weight_decay, fused=True
    )


def lr_at(train: TrainSection, step: int, total_steps: int) -> float:
    """The learning rate of the step after `step` steps of `total_steps`: a linear warm-up
    over `warmup_steps`, then `lr` (constant) or a cosine from `lr` down to
    `lr x final_lr_fraction` at the last step. A pure function of the step, so a resumed run
    continues the same schedule."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, total_steps - 1 - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.lr * train.final_lr_fraction
    return floor + (train.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def prepare(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """`model` for training: channels_last, torch.compile, then wrapped for DDP (gloo on CPUs,
    NCCL on GPUs: set by the trainer). Returns the wrapped model; `model` stays the bare one."""
    if config.compute.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compute.compile:
        model.compile()
    return ray.train.torch.prepare_model(
        model,
        move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": config.compute.find_unused_parameters},
    )


# -- epochs and their batches -------------------------------------------------------------------


def agreed_steps_in_epoch(
    config: TrainConfig, stream: ClipStream, worker: WorkerContext, epoch: int
) -> int:
    """The steps of `epoch`: the same on every rank, the smallest `samples_per_rank // batch`."""
    local = stream.samples_per_rank() // config.data.batch_size
    steps = agreed_steps(local, worker.device)
    if steps == 0:
        raise RuntimeError(
            f"epoch {epoch}: rank {worker.rank} gets {stream.samples_per_rank()} clips, fewer "
            f"than one batch of {config.data.batch_size}; use more data, fewer workers or "
            "smaller batches"
        )
    return steps


def agreed_steps(local_steps: int, device: torch.device) -> int:
    """The smallest step count over all ranks: every rank then runs the same number of steps."""
    if not (dist.is_available() and dist.is_initialized()):
        return local_steps
    count = torch.tensor([local_steps], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())  # once per epoch


def planned_total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    total = config.train.epochs * steps_per_epoch
    return min(total, config.train.max_steps or total)


def epoch_batches(
    config: TrainConfig,
    stream: ClipStream,
    worker: WorkerContext,
    state: TrainState,
    steps_in_epoch: int,
) -> Iterator[dict[str, Any]]:
    """The batches left of the epoch `state` is in (up to max_steps), all full; an error if
    the stream ends before them."""
    epoch, done_before = state.epoch, state.step_in_epoch  # `state` moves on as steps run
    remaining = steps_in_epoch - done_before
    if config.train.max_steps is not None:
        remaining = min(remaining, config.train.max_steps - state.step)
    loader = epoch_loader(config, stream, epoch, worker.device.type == "cuda")
    batches = exact_batches(loader, config.data.batch_size)
    for done in range(remaining):
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError(
                f"epoch {epoch}: rank {worker.rank}'s data ended after {done_before + done} "
                "steps; the shard stream yielded fewer clips than samples_per_rank() promised"
            )
        yield batch


def record_keys(worker: WorkerContext, epoch: int, keys: list[str]) -> None:
    """Which clips this rank trained on in `epoch` (an audit trail of the data split): the
    sample key, `@` and the raw frame indices for a clip drawn from a video window."""
    url = storage.join(worker.run_dir, f"sample_keys/epoch-{epoch:04d}/rank-{worker.rank:03d}.txt")
    storage.write_bytes_atomic(url, "\n".join(keys).encode() + b"\n")


# -- progress and metrics -----------------------------------------------------------------------


class StepMetrics:
    """Rank 0's per-step metrics in MLflow (other ranks log nothing), each step logged once.

    An attempt that resumes re-runs the steps after its checkpoint; MLflow may hold some of
    them already (logged before the failure) and its history is append-only, so steps up to
    the highest step of `train/loss` in MLflow are not logged again.
    """

    def __init__(self, buffer: MetricBuffer | None, logged_through: int = 0):
        self.buffer = buffer
        self.logged_through = logged_through

    @classmethod
    def for_worker(cls, worker: WorkerContext) -> StepMetrics:
        if not (worker.is_rank0 and worker.tracking_uri and worker.mlflow_run_id):
            return cls(None)
        history = MlflowClient(worker.tracking_uri).get_metric_history(
            worker.mlflow_run_id, LOSS_METRIC
        )
        buffer = MetricBuffer(worker.tracking_uri, worker.mlflow_run_id)
        return cls(buffer, logged_through=max((metric.step for metric in history), default=0))

    def log(self, step: int, values: dict[str, float], again: bool = False) -> None:
        """Queue `values` at `step`, unless MLflow holds that step already (`again`: anyway)."""
        if self.buffer is not None and (again or step > self.logged_through):
            self.buffer.add(step, values)

    def flush(self) -> None:
        if self.buffer is not None:
            self.buffer.flush()


@dataclass
class ProgressWindow:
    """The steps since the last progress line: their losses (still on the device), clips and
    the time spent waiting for data."""

    started: float = field(default_factory=time.perf_counter)
    data_wait_s: float = 0.0
    clips: int = 0
    steps: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)


class Progress:
    """Progress lines and per-step metrics of one attempt, one `ProgressWindow` at a time."""

    def __init__(
        self,
        config: TrainConfig,
        worker: WorkerContext,
        optimizer: torch.optim.Optimizer,
        metrics: StepMetrics,
        start_step: int,
    ):
        self.config = config
        self.worker = worker
        self.optimizer = optimizer
        self.metrics = metrics
        self.start_step = start_step
        self.last_loss = math.nan
        self.epoch = 0
        self.total_steps = 0
        self.window = ProgressWindow()
        self.distinct_clips = DistinctClips()  # on this rank, in this attempt
        if start_step:
            metrics.log(start_step, {"train/resumed_at_step": start_step}, again=True)

    def start_epoch(self, epoch: int, total_steps: int) -> None:
        self.epoch, self.total_steps = epoch, total_steps
        self.window = ProgressWindow()

    def timed(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """`batches`, with the time spent waiting for each added to the current window."""
        iterator = iter(batches)
        while True:
            waited_from = time.perf_counter()
            batch = next(iterator, None)
            self.window.data_wait_s += time.perf_counter() - waited_from
            if batch is None:
                return
            yield batch

    def add(self, step: int, loss: torch.Tensor, clips: int) -> None:
        self.window.steps.append(step)
        self.window.losses.append(loss)
        self.window.clips += clips

    def end_window(self, step: int) -> None:
        """Read the window's losses (the one device read of a window), log them, print a line."""
        window, self.window = self.window, ProgressWindow()
        if not window.steps:
            return
        losses = torch.stack(window.losses).float().tolist()
        self.last_loss = losses[-1]
        if not self.worker.is_rank0:
            return
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        clips_per_s = window.clips / elapsed * self.worker.world_size
        wait_fraction = window.data_wait_s / elapsed
        for loss_step, loss in zip(window.steps, losses, strict=True):
            self.metrics.log(loss_step, {LOSS_METRIC: loss})
        self.metrics.log(step, self.window_metrics(clips_per_s, wait_fraction))
        self.metrics.flush()
        seconds_left = (self.total_steps - step) * elapsed / len(window.steps)
        log.info(
            f"step {step}/{self.total_steps} epoch {self.epoch} "
            f"loss {sum(losses) / len(losses):.4f} clips/s {clips_per_s:.1f} "
            f"data-wait {wait_fraction:.0%} ETA {format_duration(seconds_left)}"
        )

    def window_metrics(self, clips_per_s: float, wait_fraction: float) -> dict[str, float]:
        values = {
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/clips_per_s": clips_per_s,
            "train/clips_per_s_per_worker": clips_per_s / self.worker.world_size,
            "train/data_wait_fraction": wait_fraction,
            "train/epoch": self.epoch,
            "train/distinct_clips_rank0": self.distinct_clips.count,
        }
        if self.config.curriculum:
            values["train/max_skip"] = self.config.max_skip(self.epoch)
        return values

    def flush(self) -> None:
        self.metrics.flush()

    def summary(self, state: TrainState) -> dict[str, Any]:
        """The metrics reported to Ray Train with each checkpoint and at the end."""
        return {
            **asdict(state),
            "loss": self.last_loss,
            "start_step": self.start_step,
            "world_size": self.worker.world_size,
            "distinct_clips": self.distinct_clips.count * self.worker.world_size,
        }


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- checkpoints --------------------------------------------------------------------------------


class Checkpoints:
    """Writes this attempt's checkpoints; knows the step of the newest one."""

    def __init__(self, worker: WorkerContext, taken: set[str]):
        self.worker = worker
        self.taken = taken  # names Ray Train holds already: each name must stay one entry
        self.saved_step: int | None = None

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        metrics: dict[str, Any],
    ) -> None:
        """Every rank reports (it is a barrier); rank 0 writes the files."""
        self.saved_step = state.step
        if not self.worker.is_rank0:
            ray.train.report(metrics, checkpoint=None)
            return
        name = self.new_name(state.step)
        with tempfile.TemporaryDirectory(prefix="vos-ckpt-") as folder:
            model_store.save_model(model, folder)
            torch.save(
                {"optimizer": optimizer.state_dict(), "state": asdict(state)},
                Path(folder) / TRAIN_STATE_FILE,
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=name,
            )
        log.info(f"checkpoint at step {state.step}: {name}")

    def new_name(self, step: int) -> str:
        """`checkpoint-step-<step>`; `-2`, `-3`, ... after it when the run holds that name
        already (its checkpoint could not be read and the run went back before it)."""
        name, again = f"checkpoint-step-{step:09d}", 1
        while name in self.taken:
            again += 1
            name = f"checkpoint-step-{step:09d}-{again}"
        self.taken.add(name)
        return name


def checkpoint_order(name: str) -> tuple[int, int] | None:
    """(step, repeat) of a checkpoint folder's name, newest largest; None for other names."""
    match = CHECKPOINT_NAME.match(name)
    return (int(match[1]), int(match[2] or 1)) if match else None
