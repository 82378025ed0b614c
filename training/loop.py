"""The training loop that every Ray Train worker runs (one copy per rank).

One step follows both papers: the model encodes frame 0 with its mask, predicts frame 1,
puts its own *soft* frame-1 prediction into memory and predicts frame 2 (the model does this
inside `net(frames, first_labels, num_objects)`); the loss is taken on frames 1 and 2
(cross-entropy for gc and stm, hybrid BCE + SSIM + IoU plus cross-entropy for gvos_scm; the
model's `loss`). Adam, gradient clipping, batch norm frozen (the model keeps it frozen in
`train()`), bf16 autocast and channels_last on GPUs, `torch.compile` as an option.

Data. Each rank streams its own share of the shards with `datagen.reader.ClipStream(rank,
world_size)` through a torch DataLoader whose worker processes read and decode the clips.
Every rank runs exactly `min over ranks(samples_per_rank // batch_size)` steps per epoch
(agreed with one all-reduce), and every step has exactly `batch_size` clips (`exact_batches`
merges the short batches each DataLoader worker ends with), so DDP never waits at an
epoch's end for a rank that has run out. The rank-0 process logs per-step metrics to MLflow
and one progress line per `train.log_every_steps` (step, loss, clips/s, data wait, ETA).

Why a WebDataset DataLoader and not Ray Data: measured with the same shards, batch size and
two decoding processes (`python benchmarks/train_throughput.py --compare-loaders --resolution
384 --batch-size 8`, 2026-11-21, 2 CPUs), the DataLoader delivered 90.9 clips/s and Ray Data
(`read_webdataset` + `map_batches` + `iter_torch_batches`) 65.7 clips/s; at 64 px, 657
against 95. Both keep the ranks in step (Ray Data through `streaming_split(equal=True)`,
the DataLoader through the agreed step count above); the DataLoader also decodes in the
training worker's own processes, so it asks the cluster for no extra CPUs.

Checkpoints (every `run.checkpoint_every_steps` and at the end) hold `model.pt` (see
`tracking.model_store`, so `load_model(<checkpoint>)` works) and `train_state.pt` (optimizer
state, global step, epoch, step within the epoch). A retried worker group, or a rerun with
the same run name, restarts from the latest checkpoint: the step counter and the optimizer
state carry on. An epoch interrupted mid-way is finished with its remaining number of steps
from a fresh pass over that epoch's stream (its order is not replayed clip for clip).
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from core import storage
from datagen.reader import ClipStream
from models import build_model
from tracking import model_store
from tracking.runs import MetricBuffer
from training.config import FinetuneConfig, PretrainConfig, TrainConfig

__all__ = ["TrainState", "exact_batches", "train_loop_per_worker", "train_step"]

TRAIN_STATE_FILE = "train_state.pt"

log = logging.getLogger("vos.train")


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken in the whole run, over all attempts
    epoch: int = 0
    step_in_epoch: int = 0


@dataclass
class WorkerContext:
    """What this worker needs to know about its place in the run."""

    rank: int
    world_size: int
    device: torch.device
    run_dir: str
    tracking_uri: str | None
    mlflow_run_id: str | None


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Entry point given to `TorchTrainer`; `loop_config` is built by `training.driver`."""
    config = parse_config(loop_config["config"])
    context = ray.train.get_context()
    worker = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        run_dir=loop_config["run_dir"],
        tracking_uri=loop_config.get("tracking_uri"),
        mlflow_run_id=loop_config.get("mlflow_run_id"),
    )
    if worker.tracking_uri:  # for init.model_uri = models:/... or runs:/...
        mlflow.set_tracking_uri(worker.tracking_uri)
    torch.manual_seed(config.data.seed)
    net, optimizer, state = restore_or_start(config, worker.device, worker.rank)
    resumed = ray.train.get_checkpoint() is not None
    model = prepare(net, config)
    return Trainer(config, worker, net, model, optimizer, state, resumed).run()


def parse_config(data: dict[str, Any]) -> TrainConfig:
    schema = FinetuneConfig if data.get("stage") == "finetune" else PretrainConfig
    return schema.model_validate(data)


# -- model, optimizer, restore ------------------------------------------------------------------


def restore_or_start(
    config: TrainConfig, device: torch.device, rank: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainState]:
    """The latest checkpoint of this run if there is one, else a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        net = initial_network(config, rank).to(device)
        return net, make_optimizer(config, net), TrainState()
    with checkpoint.as_directory() as folder:
        net = model_store.load_model(folder, device=device)
        saved = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    optimizer = make_optimizer(config, net)
    optimizer.load_state_dict(saved["optimizer"])
    for group in optimizer.param_groups:  # the config's lr wins over the checkpoint's
        group["lr"] = config.train.lr
    return net, optimizer, TrainState(**saved["state"])


def initial_network(config: TrainConfig, rank: int) -> torch.nn.Module:
    """Pretraining builds the network; fine-tuning loads the one it starts from.

    Only rank 0 fetches ImageNet backbone weights: DDP copies rank 0's parameters and buffers
    to every other rank when it wraps the network.
    """
    if config.init is None:
        return build_model(
            config.model.name,
            size=config.model.size,
            pretrained_backbone=config.model.pretrained_backbone and rank == 0,
            **config.model.options,
        )
    net = model_store.load_model(config.init.model_uri)
    arch = net.config.get("name", config.model.name)
    if arch != config.model.name:
        raise ValueError(
            f"init.model_uri {config.init.model_uri} is a {arch!r} model but model.name is "
            f"{config.model.name!r}"
        )
    return net


def make_optimizer(config: TrainConfig, net: torch.nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.Adam(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)


def prepare(net: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """channels_last, torch.compile and DDP (gloo on CPUs, NCCL on GPUs: set by the trainer)."""
    if config.compute.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if config.compute.compile:
        net.compile()
    return ray.train.torch.prepare_model(
        net,
        move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": config.compute.find_unused_parameters},
    )


# -- data ---------------------------------------------------------------------------------------


def clip_stream(config: TrainConfig, rank: int, world_size: int, epoch: int) -> ClipStream:
    return ClipStream(
        config.data.manifests,
        weights=config.data.weights,
        rank=rank,
        world_size=world_size,
        seed=config.data.seed,
        shuffle_buffer=config.data.shuffle_buffer,
        max_objects=config.data.max_objects,
        max_skip=config.max_skip(epoch),
    )


def epoch_loader(config: TrainConfig, stream: ClipStream, epoch: int, use_gpu: bool) -> DataLoader:
    workers = config.data.loader_workers
    return DataLoader(
        stream.dataset(epoch),
        batch_size=config.data.batch_size,
        num_workers=workers,
        prefetch_factor=config.data.prefetch_factor if workers else None,
        pin_memory=use_gpu,
    )


def exact_batches(batches: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
    """Yield batches of exactly `batch_size` clips.

    Full batches pass through untouched; the short batch each DataLoader worker ends its share
    with is merged with the others', and what cannot fill a batch is dropped.
    """
    short: list[dict[str, Any]] = []
    for batch in batches:
        if batch_size_of(batch) == batch_size:
            yield batch
            continue
        merged = concat_batches([*short, batch])
        while batch_size_of(merged) >= batch_size:
            yield slice_batch(merged, 0, batch_size)
            merged = slice_batch(merged, batch_size, None)
        short = [merged] if batch_size_of(merged) else []


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["key"])


def concat_batches(batches: list[dict[str, Any]]) -> dict[str, Any]:
    merged = {}
    for name, first in batches[0].items():
        values = [batch[name] for batch in batches]
        merged[name] = torch.cat(values) if torch.is_tensor(first) else sum(values, start=[])
    return merged


def slice_batch(batch: dict[str, Any], start: int, stop: int | None) -> dict[str, Any]:
    return {name: value[start:stop] for name, value in batch.items()}


def agreed_steps(local_steps: int, device: torch.device) -> int:
    """The smallest step count over all ranks: every rank then runs the same number of steps."""
    if not (dist.is_available() and dist.is_initialized()):
        return local_steps
    count = torch.tensor([local_steps], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())


# -- one step -----------------------------------------------------------------------------------


def train_step(
    model: torch.nn.Module,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    device: torch.device,
    bf16: bool = False,
    grad_clip_norm: float | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch of 3-frame clips; returns the loss (detached, on device).

    `model` is `net` wrapped for DDP (or `net` itself); the forward pass goes through `model`
    so that gradients are averaged over the ranks, the loss through the bare `net`.
    """
    frames = batch["frames"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    num_objects = int(batch["num_objects"].max())
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = model(frames, labels[:, 0], num_objects)
        loss = net.loss(prediction, labels[:, 1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip_norm)
    optimizer.step()
    return loss.detach()


# -- the loop -----------------------------------------------------------------------------------


@dataclass
class Window:
    """Timings and losses since the last progress line (one device sync per window)."""

    started: float = field(default_factory=time.perf_counter)
    data_wait_s: float = 0.0
    clips: int = 0
    steps: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)


class Trainer:
    """Runs the epochs of one attempt, from `state` to the end of the run."""

    def __init__(
        self,
        config: TrainConfig,
        worker: WorkerContext,
        net: torch.nn.Module,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        resumed: bool,
    ):
        self.config = config
        self.worker = worker
        self.net = net  # the bare network (for loss and checkpoints)
        self.model = model  # the same network, wrapped for DDP
        self.optimizer = optimizer
        self.state = state
        self.start_step = state.step
        self.is_rank0 = worker.rank == 0
        self.use_gpu = worker.device.type == "cuda"
        self.metrics = (
            MetricBuffer(worker.tracking_uri, worker.mlflow_run_id)
            if self.is_rank0 and worker.tracking_uri and worker.mlflow_run_id
            else None
        )
        self.last_loss = math.nan
        self.total_steps = 0
        # The step of the newest checkpoint: a restored run starts at one.
        self.saved_step = state.step if resumed else None

    # one attempt ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end of the run; returns the final metrics (rank 0's reach the driver)."""
        self.net.train()
        if self.start_step:
            self.say(f"resuming at step {self.start_step} (epoch {self.state.epoch})")
            self.log_metrics(self.start_step, {"train/resumed_at_step": self.start_step})
        for epoch in range(self.state.epoch, self.config.train.epochs):
            if self.finished():
                break
            self.run_epoch(epoch)
        if self.state.step != self.saved_step:
            self.checkpoint()
        self.flush_metrics()
        self.say(f"done: {self.state.step} steps, last loss {self.last_loss:.4f}")
        return self.report_metrics()

    def finished(self) -> bool:
        max_steps = self.config.train.max_steps
        return max_steps is not None and self.state.step >= max_steps

    def run_epoch(self, epoch: int) -> None:
        stream = clip_stream(self.config, self.worker.rank, self.worker.world_size, epoch)
        steps_in_epoch = agreed_steps(
            stream.samples_per_rank() // self.config.data.batch_size, self.worker.device
        )
        if steps_in_epoch == 0:
            raise RuntimeError(
                f"epoch {epoch}: rank {self.worker.rank} gets "
                f"{stream.samples_per_rank()} clips, fewer than one batch of "
                f"{self.config.data.batch_size}; use more data, fewer workers or smaller batches"
            )
        if epoch != self.state.epoch:
            self.state = TrainState(step=self.state.step, epoch=epoch, step_in_epoch=0)
        self.total_steps = self.planned_total_steps(steps_in_epoch)
        remaining = steps_in_epoch - self.state.step_in_epoch
        if self.config.train.max_steps is not None:
            remaining = min(remaining, self.config.train.max_steps - self.state.step)
        loader = epoch_loader(self.config, stream, epoch, self.use_gpu)
        batches = itertools.islice(exact_batches(loader, self.config.data.batch_size), remaining)
        keys = self.run_steps(batches, remaining, epoch)
        if self.config.run.record_sample_keys:
            self.record_keys(epoch, keys)
        if self.state.step_in_epoch >= steps_in_epoch:
            self.state = TrainState(step=self.state.step, epoch=epoch + 1, step_in_epoch=0)

    def planned_total_steps(self, steps_per_epoch: int) -> int:
        total = self.config.train.epochs * steps_per_epoch
        return min(total, self.config.train.max_steps or total)

    def run_steps(self, batches: Iterator[dict[str, Any]], count: int, epoch: int) -> list[str]:
        keys: list[str] = []
        window = Window()
        for _ in range(count):
            waited_from = time.perf_counter()
            batch = next(batches, None)
            window.data_wait_s += time.perf_counter() - waited_from
            if batch is None:
                raise RuntimeError(
                    f"epoch {epoch}: rank {self.worker.rank}'s data ended after "
                    f"{self.state.step_in_epoch} steps; the shard stream yielded fewer clips "
                    "than samples_per_rank() promised"
                )
            keys += list(batch["key"])
            window.losses.append(self.train_step(batch))
            window.steps.append(self.state.step + 1)
            window.clips += batch_size_of(batch)
            self.state.step += 1
            self.state.step_in_epoch += 1
            if self.state.step % self.config.train.log_every_steps == 0:
                self.end_window(window, epoch)
                window = Window()
            if self.state.step % self.config.run.checkpoint_every_steps == 0:
                self.checkpoint()
        if window.steps:
            self.end_window(window, epoch)
        return keys

    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        return train_step(
            self.model,
            self.net,
            self.optimizer,
            batch,
            self.worker.device,
            bf16=self.config.compute.precision == "bf16",
            grad_clip_norm=self.config.train.grad_clip_norm,
        )

    # progress, metrics, checkpoints -----------------------------------------------------------
    def end_window(self, window: Window, epoch: int) -> None:
        losses = torch.stack(window.losses).float().tolist()  # the one device sync of a window
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        self.last_loss = losses[-1]
        clips_per_s = window.clips / elapsed
        wait_fraction = window.data_wait_s / elapsed
        if not self.is_rank0:
            return
        for step, loss in zip(window.steps, losses, strict=True):
            self.log_metrics(step, {"train/loss": loss})
        self.log_metrics(
            self.state.step,
            {
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/clips_per_s": clips_per_s * self.worker.world_size,
                "train/clips_per_s_per_worker": clips_per_s,
                "train/data_wait_fraction": wait_fraction,
                "train/epoch": epoch,
                **(
                    {"train/max_skip": self.config.max_skip(epoch)}
                    if self.config.curriculum
                    else {}
                ),
            },
        )
        self.flush_metrics()
        seconds_left = (self.total_steps - self.state.step) * elapsed / len(window.steps)
        self.say(
            f"step {self.state.step}/{self.total_steps} epoch {epoch} "
            f"loss {sum(losses) / len(losses):.4f} "
            f"clips/s {clips_per_s * self.worker.world_size:.1f} "
            f"data-wait {wait_fraction:.0%} ETA {format_duration(seconds_left)}"
        )

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.add(step, values)

    def flush_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def say(self, message: str) -> None:
        if self.is_rank0:
            log.info(message)

    def report_metrics(self) -> dict[str, Any]:
        return {
            **asdict(self.state),
            "loss": self.last_loss,
            "start_step": self.start_step,
            "world_size": self.worker.world_size,
        }

    def checkpoint(self) -> None:
        """Every rank reports (it is a barrier); rank 0 writes the files."""
        metrics = self.report_metrics()
        self.saved_step = self.state.step
        if not self.is_rank0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="vos-ckpt-") as folder:
            model_store.save_model(self.net, folder)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "state": asdict(self.state)},
                Path(folder) / TRAIN_STATE_FILE,
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"checkpoint-step-{self.state.step:09d}",
            )
        self.say(f"checkpoint at step {self.state.step}")

    def record_keys(self, epoch: int, keys: list[str]) -> None:
        """Which clips this rank trained on in `epoch` (an audit trail of the data split)."""
        url = storage.join(
            self.worker.run_dir, f"sample_keys/epoch-{epoch:04d}/rank-{self.worker.rank:03d}.txt"
        )
        storage.write_bytes_atomic(url, "\n".join(keys).encode() + b"\n")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
