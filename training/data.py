"""The training data path: each rank's clip stream, its DataLoader and exact-size batches,
and what a run is told about its data (distinct clips trained on, image clips replayed).

`clip_stream` builds the epoch's `datagen.reader.ClipStream` from the config: the
curriculum's frame gap for the epoch, the online augmentation, the shard checks. Every rank
yields exactly `stream.samples_per_rank()` clips per epoch and `exact_batches` turns them
into full batches, so every rank runs the same number of steps.

`DistinctClips` counts the distinct clips a rank has trained on (a window's clip is its key
and frame indices, so fresh draws count; an image clip is its key, however augmented): the
figure that shows whether a run saw variety or replayed a small set. `image_clip_replays`
estimates, before a run, how often it will see each pre-generated image clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from datagen.manifest import check_shards
from datagen.reader import Augment, ClipStream, collate_clips
from training.config import TrainConfig

__all__ = [
    "REPLAYS_WORTH_A_WARNING",
    "DistinctClips",
    "batch_size_of",
    "clip_stream",
    "concat_batches",
    "epoch_loader",
    "exact_batches",
    "image_clip_replays",
    "replay_warnings",
    "shard_problems",
    "slice_batch",
    "training_batch",
]

REPLAYS_WORTH_A_WARNING = 10  # an image clip seen more often than this is a small set replayed


def clip_stream(config: TrainConfig, rank: int, world_size: int, epoch: int) -> ClipStream:
    data = config.data
    return ClipStream(
        data.manifests,
        weights=data.weights,
        rank=rank,
        world_size=world_size,
        seed=data.seed,
        shuffle_buffer=data.shuffle_buffer,
        max_objects=data.max_objects,
        max_skip=config.max_skip(epoch),
        augment=Augment(
            flip=data.flip, colour_jitter=data.colour_jitter, crop_jitter=data.crop_jitter
        ),
        verify=data.verify_shards,
        bad_shards=data.bad_shards,
        uint8=True,  # converted by epoch_loader, after the loader's shared memory
    )


def epoch_loader(
    config: TrainConfig, stream: ClipStream, epoch: int, use_gpu: bool, as_uint8: bool = False
) -> Iterator[dict[str, Any]]:
    """The epoch's batches from a DataLoader whose worker processes read and decode.

    The workers send uint8 frames and labels (4x fewer bytes through shared memory than
    float), each batch written straight into one block of shared memory that the loader hands
    on without a copy (`datagen.reader.collate_clips`). Here they become float frames in
    [0, 1] and int64 labels (`training_batch`), which costs this process 1 to 2.5 ms per
    384 px clip (mostly the page faults of the new float batch). With `as_uint8` they stay
    uint8, for a loop that converts them on the device after the copy (cheaper there, and a
    quarter of the bytes to copy).
    """
    workers = config.data.loader_workers
    loader = DataLoader(
        stream.dataset(epoch, config.data.batch_size),  # each batch written in one block
        batch_size=config.data.batch_size,
        num_workers=workers,
        collate_fn=collate_clips,  # hands that block on, without a copy
        prefetch_factor=config.data.prefetch_factor if workers else None,
        pin_memory=use_gpu,
    )
    return iter(loader) if as_uint8 else (training_batch(batch) for batch in loader)


def training_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch as the training step takes it: float frames in [0, 1], int64 labels (works on
    the CPU batch, or on one already on the device)."""
    if batch["frames"].dtype == torch.uint8:
        batch["frames"] = batch["frames"].float().div_(255.0)
    batch["labels"] = batch["labels"].long()
    return batch


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


class DistinctClips:
    """The distinct clips one rank has trained on: `add(batch)` after each step, `count`.

    Clips are told apart by the batch's "clip" names (only their hashes are kept).
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, batch: dict[str, Any]) -> None:
        self._seen.update(hash(name) for name in batch["clip"])

    @property
    def count(self) -> int:
        return len(self._seen)


def image_clip_replays(config: TrainConfig, world_size: int) -> dict[str, float]:
    """For each image set: how many times the planned run trains on each of its clips, on
    average (all epochs, all ranks; `train.max_steps` counted). Video sets are left out: they
    give a fresh clip per window and epoch."""
    first = clip_stream(config, rank=0, world_size=world_size, epoch=0)
    steps_per_epoch = first.samples_per_rank() // config.data.batch_size
    steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        steps = min(steps, config.train.max_steps)
    clips_trained = steps * config.data.batch_size * world_size
    sizes = [int(manifest["total_samples"]) for manifest in first.manifests]
    shares = config.data.weights or sizes
    replays = {}
    for url, manifest, size, share in zip(
        config.data.manifests, first.manifests, sizes, shares, strict=True
    ):
        if manifest.get("kind") == "image" and size > 0:
            replays[url] = clips_trained * share / sum(shares) / size
    return replays


def replay_warnings(config: TrainConfig, world_size: int) -> list[str]:
    """One line per image set whose clips the planned run sees more than
    `REPLAYS_WORTH_A_WARNING` times each."""
    return [
        f"data: the run trains on each image clip of {url} about {times:.0f} times (flips, "
        "colour and crop jitter vary the pixels, not the clips); generate more clips "
        "(clips.clips_per_source, more images) or train for fewer epochs"
        for url, times in image_clip_replays(config, world_size).items()
        if times > REPLAYS_WORTH_A_WARNING
    ]


def shard_problems(url: str, manifest: dict) -> str | None:
    """What is wrong with a set's shards on storage (missing, other size), one line, or None."""
    problems = check_shards(url, manifest)
    if not problems:
        return None
    shown = "; ".join(problems[:5]) + (f"; {len(problems) - 5} more" if len(problems) > 5 else "")
    return f"{len(problems)} of {len(manifest['shards'])} shards do not match the manifest: {shown}"
