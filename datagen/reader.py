"""Reading shard sets for training: `ClipStream` turns manifests into a torch IterableDataset
of training clips, drawn and augmented afresh every epoch.

    stream = ClipStream(["s3://data/msra/train", "s3://data/ecssd/train"], weights=[3, 1],
                        rank=rank, world_size=world_size, seed=0, max_skip=5)
    steps = stream.samples_per_rank() // batch_size        # the same on every rank
    loader = DataLoader(stream.dataset(epoch), batch_size=batch_size, num_workers=4)
    for step, batch in zip(range(steps), loader): ...

With `uint8=True`, `stream.dataset(epoch, batch_size)` and `collate_fn=collate_clips` write
each batch's clips straight into one block of shared memory, which the loader hands on
without a copy (see **uint8 samples**).

Only sets with a `manifest.json` are read (`read_manifest` refuses the others).

**Fresh clips every epoch.** A video set's samples are windows of consecutive annotated
frames (`datagen.synthesis.make_video_window`). Each time a window is read, a 3-frame clip is
drawn from it (`draw_window_frames`): temporally ordered, every gap at most `max_skip` *raw*
video frames (the curriculum's value for the epoch; None: the set's own `window.max_skip`),
its first frame showing an object. On YouTube-VOS (annotated every 5th frame) a gap of 5 is
the next annotated frame, so the papers' skips apply unchanged. Image sets hold fixed 3-frame
clips. Every clip gets cheap augmentation in the DataLoader worker (`Augment`): one
horizontal flip, one colour jitter (brightness, contrast, saturation: linear, so applied
together in place) and a crop of the clip size that moves by up to `crop_jitter` per frame. A window's
crop is placed at random with its first frame's objects inside; an image clip is already at
the clip size, so its crop only shifts (the uncovered border is black, like the clips' own
borders). All random draws of a sample come from (seed, epoch, rank, worker, set, key,
pass): a run repeats exactly with the same world size and loader workers, and epochs differ.
Each sample names its clip ("clip": key and frame indices) so the distinct clips a run
trained on can be counted.

**Ranks and workers.** Shards are split between ranks by explicit `rank` / `world_size`
(`wds.split_by_node` takes the rank from the environment, and its plain stride of shards
would not balance uneven shards): whole shards balanced by sample count, or, with fewer
shards than ranks, every rank reads all shards and keeps every `world_size`-th sample (by
its index in the set, so the order shards are read in does not matter). A rank's part is
split again the same way between its DataLoader workers (`wds.split_by_worker` would not
balance either); the epoch's shard order breaks ties, so the split changes from epoch to
epoch. Ranks never share a sample. Shards are opened through fsspec (`core.storage.filesystem`) in the worker that reads them,
so each DataLoader worker has its own S3 client (s3fs is not fork-safe).

**Exactly `samples_per_rank()` per epoch.** `samples_per_rank()` is the minimum over ranks
of the samples a rank holds, and every rank yields exactly that many per epoch, so every
rank runs the same number of full batches. Each DataLoader worker yields its quota and stops
(`wds.DataPipeline.with_epoch`): without weights, the rank's epoch split in proportion to
what the workers' shards hold, so no worker needs more than its shards; with weights, even
quotas. A worker reads its shards pass after pass, each pass in a new order, until its quota
is reached; a second pass (a sample twice in an epoch) happens only with weights or after
skipped shards. (`wds.ResampledShards` draws shards with replacement: it would repeat
samples in every epoch and leave others out.)

**Shuffling.** Shard order is shuffled per epoch and pass; the samples of a pass then go
through a `wds.shuffle` buffer of `shuffle_buffer` seeded by (seed, epoch, rank, worker),
emptied at the end of the pass (a buffer reaching into the next pass would repeat samples).

**Several sets.** Without weights, the sets are pooled. With `weights`, each worker draws
the next sample's set at random with those weights (a small, heavily weighted set repeats);
an epoch is still `samples_per_rank()` samples.

**uint8 samples** (`uint8=True`) carry a quarter of the bytes through the DataLoader's
shared memory; at 384 px that cost more worker time than decoding (measured with
`benchmarks/train_throughput.py --data-only`). Training converts them after the loader
(`training.data.epoch_loader`). Given the loader's `batch_size`, a worker writes each
`batch_size` consecutive clips into one fresh block of shared memory (every block is new, so
nothing the loader has handed on is ever written again), and `collate_clips` makes the batch
a view of that block: the loader's own collate would copy every clip into new shared memory,
a sixth of the worker's time at 384 px.

**Shard checks.** Shards are read with `datagen.shards.read_shard`: size checked before,
sha256 of the bytes as they stream by (`verify`), every sample's members and the sample
count checked; a frame that does not decode is named too. A bad shard raises `ShardError`,
one line naming it (`bad_shards="stop"`, the default), or is logged in one line, counted
(`skipped_shards()`, over all DataLoader workers) and left out for the rest of the epoch
(`"skip"`). The sha256 is known only at the end of a shard: all its samples but the last
have been yielded, and trained on, by then (the price of reading each shard once); a shard
whose reading the epoch's quota cuts short is not hashed.

Each sample is a dict:
    "frames":      float32 [3, 3, S, S] in [0, 1]; with `uint8=True`, uint8 0..255
    "labels":      int64 [3, S, S] (uint8 with `uint8=True`); the objects of frame 0 become
                   1..K (K <= max_objects, a random choice when there are more); everything
                   else is background 0
    "num_objects": K
    "key":         the sample key in its shard (prefixed "<set>/" when reading several sets)
    "clip":        what makes the clip distinct: the key, and for a window the raw indices
                   of the drawn frames ("<key>@12,15,19")
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from torchvision.io import decode_jpeg, decode_png
from webdataset.utils import pytorch_worker_info

from datagen.manifest import ManifestError, manifest_url, read_manifest, shard_url
from datagen.shards import ShardError, read_shard
from datagen.synthesis import draw_window_frames

__all__ = [
    "NO_AUGMENT",
    "Augment",
    "ClipStream",
    "ManifestError",
    "ShardError",
    "collate_clips",
    "read_manifest",
]

log = logging.getLogger("vos.data")

BadShards = Literal["stop", "skip"]
CLIP_FRAMES = 3
CROP_ATTEMPTS = 3
FEW_IDS = 16  # a mask with ids up to this is searched id by id
CHUNK_PIXELS = 1 << 15  # per step of the colour jitter: ~0.5 MiB of float buffers
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Augment:
    """The augmentation every clip gets in the DataLoader workers."""

    flip: bool = True  # horizontal, half of the clips
    colour_jitter: float = 0.2  # brightness, contrast and saturation each x U(1 -+ this)
    crop_jitter: float = 0.05  # each frame's crop moves by up to this fraction of the size


NO_AUGMENT = Augment(flip=False, colour_jitter=0.0, crop_jitter=0.0)


# -- which samples each rank and worker reads -----------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    set_index: int
    url: str
    samples: int
    bytes: int
    sha256: str
    first: int = 0  # index of its first sample among all samples of its pool (manifest order)


@dataclass(frozen=True)
class _Part:
    """Shards to read, keeping the samples whose index in the pool is `offset` mod `stride`
    (an index that does not depend on the order shards are read in)."""

    shards: tuple[_Shard, ...]
    stride: int = 1
    offset: int = 0

    def kept(self, shard: _Shard) -> int:
        start = shard.first + (self.offset - shard.first) % self.stride
        return len(range(start, shard.first + shard.samples, self.stride))

    def count(self) -> int:
        return sum(self.kept(shard) for shard in self.shards)

    def keeps(self, shard: _Shard, position: int) -> bool:
        return (shard.first + position) % self.stride == self.offset


def _pool(shards: list[_Shard]) -> _Part:
    """All of `shards` as one part, each sample indexed in this order."""
    firsts = itertools.accumulate((shard.samples for shard in shards), initial=0)
    return _Part(
        tuple(replace(shard, first=first) for shard, first in zip(shards, firsts, strict=False))
    )


def _divide(part: _Part, index: int, count: int) -> _Part:
    """Share `index` of `count`: whole shards balanced by samples (largest first to the share
    with fewest, ties by shard order), or, with fewer shards than shares, all of them keeping
    every `count`-th of the part's samples."""
    if len(part.shards) < count:
        return _Part(part.shards, part.stride * count, part.offset + part.stride * index)
    loads = [0] * count
    owned: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(part.shards)), key=lambda i: (-part.kept(part.shards[i]), i)):
        target = min(range(count), key=lambda share: (loads[share], share))
        loads[target] += part.kept(part.shards[i])
        owned[target].append(i)
    return _Part(tuple(part.shards[i] for i in sorted(owned[index])), part.stride, part.offset)


class ClipStream:
    """Training clips from one or more shard sets, split by rank; see the module docstring."""

    def __init__(
        self,
        manifest_urls: str | list[str],
        weights: list[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        max_objects: int = 3,
        max_skip: int | None = None,
        augment: Augment = NO_AUGMENT,
        verify: bool = True,
        bad_shards: BadShards = "stop",
        uint8: bool = False,
    ):
        urls = [manifest_urls] if isinstance(manifest_urls, str) else list(manifest_urls)
        if not urls:
            raise ValueError("ClipStream needs at least one manifest URL")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if weights is not None and (
            len(weights) != len(urls) or any(w < 0 for w in weights) or sum(weights) <= 0
        ):
            raise ValueError(
                f"weights must be {len(urls)} non-negative numbers with a positive sum"
            )
        if max_objects < 1:
            raise ValueError("max_objects must be >= 1")
        if bad_shards not in ("stop", "skip"):
            raise ValueError(f"bad_shards must be 'stop' or 'skip', got {bad_shards!r}")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.max_objects, self.max_skip = shuffle_buffer, max_objects, max_skip
        self.augment, self.verify, self.bad_shards = augment, verify, bad_shards
        self.uint8 = uint8
        self.weights = None if weights is None else [float(w) for w in weights]
        self.manifests = [read_manifest(url) for url in urls]
        sizes = {m["clip"]["size"] for m in self.manifests}
        if len(sizes) > 1:
            raise ManifestError(
                f"the sets have different clip sizes {sorted(sizes)}; they cannot be batched together"
            )
        self.size = sizes.pop()
        self.sets: list[list[_Shard]] = []
        for set_index, (url, manifest) in enumerate(zip(urls, self.manifests, strict=True)):
            location = manifest_url(url)
            self.sets.append(
                [
                    _Shard(
                        set_index,
                        shard_url(location, entry["name"]),
                        int(entry["samples"]),
                        int(entry["bytes"]),
                        entry["sha256"],
                    )
                    for entry in manifest["shards"]
                ]
            )
        self._skipped = multiprocessing.Value("i", 0)  # shared with forked DataLoader workers

    def max_gap(self, set_index: int) -> int:
        """The largest gap (raw frames) of the clips drawn from a video set's windows."""
        if self.max_skip is not None:
            return self.max_skip
        window = self.manifests[set_index].get("window") or {}
        return int(window.get("max_skip", 1))

    # -- sizes ------------------------------------------------------------------------------
    def _parts(self, rank: int) -> list[_Part]:
        """The parts of each set (weighted) or of the pooled sets (unweighted) for `rank`."""
        if self.weights is None:
            pooled = _pool([shard for shards in self.sets for shard in shards])
            return [_divide(pooled, rank, self.world_size)]
        return [_divide(_pool(shards), rank, self.world_size) for shards in self.sets]

    def samples_held(self, rank: int | None = None) -> int:
        """Samples `rank` (default: this stream's) holds; an epoch reads samples_per_rank()."""
        return sum(part.count() for part in self._parts(self.rank if rank is None else rank))

    def samples_per_rank(self) -> int:
        """Samples every rank yields per epoch: the minimum over ranks of what they hold."""
        return min(self.samples_held(rank) for rank in range(self.world_size))

    def skipped_shards(self) -> int:
        """Bad shards skipped so far (`bad_shards="skip"`), by all workers of this stream."""
        return self._skipped.value

    def dataset(self, epoch: int = 0, batch_size: int | None = None) -> IterableDataset:
        """The stream for one epoch (a fresh shuffle and fresh clips per epoch). With the
        loader's `batch_size` (and `uint8`), each batch's clips share one block of memory for
        `collate_clips` (shared memory in a loader worker)."""
        return _ClipDataset(self, epoch, batch_size)


# -- one epoch of one worker ----------------------------------------------------------------------


@dataclass
class _Drawn:
    """A sample with its clip's frames chosen (only their bytes kept), before decoding."""

    set_index: int
    url: str  # of its shard
    key: str
    record: dict
    positions: list[int]
    jpegs: list[bytes]
    pngs: list[bytes]
    rng: random.Random


class _ClipDataset(IterableDataset):
    def __init__(self, stream: ClipStream, epoch: int, batch_size: int | None = None):
        super().__init__()
        self.stream, self.epoch = stream, epoch
        self.batch_size = batch_size if stream.uint8 else None
        self.parts = stream._parts(stream.rank)
        self.epoch_length = stream.samples_per_rank()

    def __iter__(self) -> Iterator[dict]:
        _, _, worker, workers = pytorch_worker_info()
        shares = [self._shares(i, part, workers) for i, part in enumerate(self.parts)]
        if self.stream.weights is None:  # each worker up to what its shards hold
            quotas = _quotas([share.count() for share in shares[0]], self.epoch_length)
        else:  # each worker draws from every set: even quotas
            quotas = [
                self.epoch_length // workers + (w < self.epoch_length % workers)
                for w in range(workers)
            ]
        if quotas[worker] == 0:  # with_epoch(0) would mean "no limit"
            return iter(())
        seed = f"{self.stream.seed}/{self.epoch}/{self.stream.rank}/{worker}"
        shuffle = random.Random(f"{seed}/shuffle")
        sources = [
            self._passes(i, part_shares[worker], seed, shuffle)
            for i, part_shares in enumerate(shares)
        ]
        weights = self.stream.weights or [1.0]
        pipeline = wds.DataPipeline(
            lambda: _mixed(sources, weights, random.Random(f"{seed}/mix")),
            self._clips,
        ).with_epoch(quotas[worker])
        return iter(pipeline)

    def _shares(self, part_index: int, part: _Part, workers: int) -> list[_Part]:
        """Every worker's share of `part` in this epoch (ties broken by the epoch's shard order)."""
        order = list(part.shards)
        random.Random(f"{self.stream.seed}/{self.epoch}/{part_index}").shuffle(order)
        ordered = _Part(tuple(order), part.stride, part.offset)
        return [_divide(ordered, worker, workers) for worker in range(workers)]

    def _passes(
        self, part_index: int, share: _Part, seed: str, shuffle: random.Random
    ) -> Iterator[_Drawn]:
        """This worker's share of a part, pass after pass (each in a new shard order, shuffled
        within the pass so that no pass mixes into the next), clips drawn; ends when a pass
        finds no sample."""
        stream = self.stream
        bad: set[str] = set()
        for number in itertools.count():
            order = [shard for shard in share.shards if shard.url not in bad]
            random.Random(f"{seed}/{part_index}/{number}").shuffle(order)
            drawn = self._drawn(self._pass(share, order, bad, number), seed)
            if stream.shuffle_buffer > 1:
                drawn = wds.shuffle(stream.shuffle_buffer, rng=shuffle)(drawn)
            found = False
            for clip in drawn:
                found = True
                yield clip
            if not found:
                return

    def _pass(self, share: _Part, order: list[_Shard], bad: set[str], number: int) -> Iterator:
        """(set index, shard URL, raw sample) of one pass over `order`, the samples `share`
        keeps."""
        for shard in order:
            for position, sample in enumerate(self._shard_samples(shard, bad)):
                if share.keeps(shard, position):
                    sample["__pass__"] = number
                    yield shard.set_index, shard.url, sample

    def _shard_samples(self, shard: _Shard, bad: set[str]) -> Iterator[dict]:
        stream = self.stream
        try:
            yield from read_shard(
                shard.url, shard.samples, shard.bytes, shard.sha256, stream.verify
            )
        except ShardError as err:
            if stream.bad_shards == "stop":
                raise
            bad.add(shard.url)
            with stream._skipped.get_lock():
                stream._skipped.value += 1
            log.warning("skipped a bad shard: %s", err)

    def _drawn(self, samples: Iterator, seed: str) -> Iterator[_Drawn]:
        """Choose each sample's clip frames (a window: a fresh draw) and keep only their bytes."""
        for set_index, url, sample in samples:
            key = sample["__key__"]
            rng = random.Random(f"{seed}/{set_index}/{key}/{sample['__pass__']}")
            record = json.loads(sample["json"])
            if record.get("kind") == "window":
                starts_ok = [bool(objects) for objects in record["frame_objects"]]
                positions = draw_window_frames(
                    record["frame_indices"], self.stream.max_gap(set_index), rng, starts_ok
                )
            else:
                positions = list(range(CLIP_FRAMES))
            yield _Drawn(
                set_index,
                url,
                key,
                record,
                positions,
                [sample[f"f{p}.jpg"] for p in positions],
                [sample[f"m{p}.png"] for p in positions],
                rng,
            )

    def _clips(self, drawn: Iterator[_Drawn]) -> Iterator[dict]:
        """Decoded, augmented clips; a sample that cannot be decoded (its shard is damaged:
        the end-of-shard check names it too) stops the stream, or is skipped."""
        buffers = _FrameBuffers()
        blocks = _Blocks(self.batch_size, self.stream.size) if self.batch_size else None
        for sample in drawn:
            try:
                yield self._clip(sample, buffers, blocks)
            except ShardError as err:
                if self.stream.bad_shards == "stop":
                    raise
                log.warning("skipped a sample: %s", err)

    def _clip(self, drawn: _Drawn, buffers: _FrameBuffers, blocks: _Blocks | None) -> dict:
        stream = self.stream
        try:
            frames = [decode_jpeg(_bytes_tensor(data)).numpy() for data in drawn.jpegs]
            masks = [decode_png(_bytes_tensor(data))[0].numpy() for data in drawn.pngs]
        except RuntimeError as err:
            raise ShardError(
                f"shard {drawn.url}: sample {drawn.key!r} cannot be decoded "
                f"({' '.join(str(err).split()).rsplit(', ', 1)[-1]}); the shard is damaged"
            ) from None
        boxes = drawn.record.get("boxes")
        box = boxes[drawn.positions[0]] if boxes else None
        height, width = masks[0].shape
        frames_out, labels_out = blocks.next_slot() if blocks else (None, None)
        for _ in range(CROP_ATTEMPTS):  # a crop that loses frame 0's objects is drawn again
            placement = _placement(height, width, stream.size, box, stream.augment, drawn.rng)
            labels, count = _first_frame_objects(
                _cropped(masks, placement, out=labels_out), stream.max_objects, drawn.rng
            )
            if count:
                break
        crops = _cropped(frames, placement, channels=3, out=frames_out)  # the crop kept
        prefix = f"{drawn.set_index}/" if len(stream.sets) > 1 else ""
        clip = prefix + drawn.key
        if drawn.record.get("kind") == "window":
            indices = drawn.record["frame_indices"]
            clip += "@" + ",".join(str(indices[p]) for p in drawn.positions)
        return {
            "frames": _coloured(
                crops, stream.augment.colour_jitter, drawn.rng, stream.uint8, buffers
            ),
            "labels": labels if stream.uint8 else labels.long(),
            "num_objects": count,
            "key": prefix + drawn.key,
            "clip": clip,
        }


def _quotas(counts: list[int], total: int) -> list[int]:
    """`total` (at most sum(counts)) split into parts of at most `counts` each, in proportion,
    the remainder one each to the parts with the largest fractions."""
    held = sum(counts)
    if held == 0:
        return [0] * len(counts)
    quotas = [count * total // held for count in counts]
    by_fraction = sorted(range(len(counts)), key=lambda i: (-(counts[i] * total % held), i))
    for i in by_fraction[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _mixed(sources: list[Iterator], weights: list[float], rng: random.Random) -> Iterator:
    """Samples from `sources`, each next one from a source drawn with `weights`; a source
    that ends is dropped, and the mix ends when every source has."""
    live = {i: source for i, source in enumerate(sources) if weights[i] > 0}
    while live:
        choices = sorted(live)
        index = (
            choices[0]
            if len(choices) == 1
            else rng.choices(choices, [weights[i] for i in choices])[0]
        )
        sample = next(live[index], None)
        if sample is None:
            del live[index]
            continue
        yield sample


# -- batches without a copy ----------------------------------------------------------------------


class _Blocks:
    """Where one iterator's clips go: each `batch_size` consecutive clips into one fresh
    block of memory, frames uint8 [batch_size, T, 3, S, S] and labels [batch_size, T, S, S]
    (shared memory in a DataLoader worker, as the loader's collate would allocate)."""

    def __init__(self, batch_size: int, size: int) -> None:
        self.batch_size, self.size = batch_size, size
        self.used = batch_size  # of the current block: none yet

    def next_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next clip's frames [T, 3, S, S] and labels [T, S, S] (views of a block)."""
        if self.used == self.batch_size:
            self.frames, self.labels = _block(self.batch_size, self.size)
            self.used = 0
        self.used += 1
        return self.frames[self.used - 1], self.labels[self.used - 1]


def _block(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and labels of `count` clips in one storage: one shared-memory segment per batch
    in a loader worker (the loader's collate makes two)."""
    frames = (count, CLIP_FRAMES, 3, size, size)
    labels = (count, CLIP_FRAMES, size, size)
    frames_bytes, labels_bytes = math.prod(frames), math.prod(labels)
    if get_worker_info() is None:
        storage = torch.UntypedStorage(frames_bytes + labels_bytes)
    else:  # as default_collate allocates its batches in a worker: sent without a copy
        storage = torch.UntypedStorage._new_shared(frames_bytes + labels_bytes)
    whole = torch.empty(0, dtype=torch.uint8).set_(storage)
    return whole[:frames_bytes].view(frames), whole[frames_bytes:].view(labels)


def collate_clips(samples: list[dict]) -> dict:
    """The DataLoader's `default_collate` of clips, except that frames and labels written to
    consecutive slots of one block (`ClipStream.dataset(epoch, batch_size)`) become views of
    that block instead of copies; any other samples are copied as `default_collate` does."""
    names = ("frames", "labels")
    views = [_slots_view([sample[name] for sample in samples]) for name in names]
    if any(view is None for view in views):
        return default_collate(samples)
    batch = default_collate([{k: v for k, v in s.items() if k not in names} for s in samples])
    return {**dict(zip(names, views, strict=True)), **batch}


def _slots_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """tensors stacked, as a view of their storage when they lie one after the other in it
    (contiguous, same shape and dtype); otherwise None."""
    first = tensors[0]
    if not torch.is_tensor(first) or not first.is_contiguous():
        return None
    storage, start, step = first.untyped_storage(), first.storage_offset(), first.numel()
    for index, tensor in enumerate(tensors):
        if (
            tensor.shape != first.shape
            or tensor.dtype != first.dtype
            or not tensor.is_contiguous()
            or tensor.untyped_storage().data_ptr() != storage.data_ptr()
            or tensor.storage_offset() != start + index * step
        ):
            return None
    return first.new_empty(0).set_(storage, start, (len(tensors), *first.shape))


# -- decoding and augmentation -------------------------------------------------------------------
#
# Frames are cropped, mirrored and transposed (torchvision decodes to channels-last memory) in
# one uint8 copy each; the colour jitter then converts a part of a frame at a time to float
# (CHUNK_PIXELS, so that its few passes stay in the L2 cache) and writes uint8 (or float) once.
# Masks are cropped before frames: a crop that loses frame 0's objects costs no frame copies.


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@dataclass(frozen=True)
class _Placement:
    """Where a clip's crops lie: each frame's window corner (top, left), one mirroring."""

    size: int
    corners: tuple[tuple[int, int], ...]
    flip: bool


def _placement(
    height: int, width: int, size: int, box: list[int] | None, augment: Augment, rng: random.Random
) -> _Placement:
    """One placement per clip of the size x size crops of frames H x W (H, W >= size): `box`'s
    centre inside, moved per frame by the crop jitter, maybe mirrored."""
    jitter = round(augment.crop_jitter * size)
    top = _crop_start(height, size, None if box is None else (box[1], box[3]), rng)
    left = _crop_start(width, size, None if box is None else (box[0], box[2]), rng)
    flip = augment.flip and rng.random() < 0.5
    corners = tuple(
        (top + rng.randint(-jitter, jitter), left + rng.randint(-jitter, jitter))
        for _ in range(CLIP_FRAMES)
    )
    return _Placement(size, corners, flip)


def _crop_start(extent: int, size: int, span: tuple[int, int] | None, rng: random.Random) -> int:
    """Where a crop of `size` starts along one axis: at random, with the centre of the objects'
    `span` inside the crop (a tenth of it from its border) when that is possible."""
    room = extent - size
    if room <= 0:
        return room // 2
    low, high = 0, room
    if span is not None:
        centre, margin = (span[0] + span[1]) // 2, size // 10
        inner_low, inner_high = max(low, centre - size + margin), min(high, centre - margin)
        if inner_low <= inner_high:
            low, high = inner_low, inner_high
    return rng.randint(low, high)


def _cropped(
    images: list[np.ndarray],
    placement: _Placement,
    channels: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 frames [C, H, W] (any strides; a grey one is repeated) or masks [H, W] (no
    `channels`) -> their crops, contiguous uint8 [T, channels, size, size] or [T, size, size]
    (written to `out` when given)."""
    size = placement.size
    leading = (channels,) if channels else ()
    if out is None:
        out = torch.empty(len(images), *leading, size, size, dtype=torch.uint8)
    for image, target, (top, left) in zip(images, out.numpy(), placement.corners, strict=False):
        _crop_into(target, image, top, left, placement.flip)
    return out


def _crop_into(out: np.ndarray, image: np.ndarray, top: int, left: int, flip: bool) -> None:
    """out [..., S, S] = the S x S window of image [..., H, W] at (top, left), zeros where it
    leaves the image, mirrored left to right with `flip`."""
    size = out.shape[-1]
    height, width = image.shape[-2:]
    y0, y1 = min(max(top, 0), height), max(min(top + size, height), 0)
    x0, x1 = min(max(left, 0), width), max(min(left + size, width), 0)
    if y0 >= y1 or x0 >= x1:
        out.fill(0)
        return
    rows, columns = (y0 - top, y1 - top), (x0 - left, x1 - left)
    source = image[..., y0:y1, x0:x1]
    if flip:  # window column c goes to column size - 1 - c
        source, columns = source[..., ::-1], (size - columns[1], size - columns[0])
    out[..., : rows[0], :] = 0  # only the border the image does not cover
    out[..., rows[1] :, :] = 0
    out[..., rows[0] : rows[1], : columns[0]] = 0
    out[..., rows[0] : rows[1], columns[1] :] = 0
    np.copyto(out[..., rows[0] : rows[1], columns[0] : columns[1]], source)


class _FrameBuffers:
    """The float buffers of the colour jitter, kept from clip to clip (fresh ones for every
    clip cost the allocator a page fault per 4 KiB: more than the jitter itself)."""

    def __init__(self) -> None:
        self.pixels, self.grey = torch.empty(3, 0), torch.empty(1, 0)

    def get(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers for `count` pixels: [3, count] and [1, count] float32."""
        if self.pixels.shape[1] != count:
            self.pixels, self.grey = torch.empty(3, count), torch.empty(1, count)
        return self.pixels, self.grey


def _coloured(
    crops: torch.Tensor,
    strength: float,
    rng: random.Random,
    uint8: bool,
    buffers: _FrameBuffers | None = None,
) -> torch.Tensor:
    """uint8 frames [T, 3, S, S] -> colour-jittered float in [0, 1], or uint8 with `uint8`
    (rounded; the crops themselves, overwritten). `buffers`: kept for the next call.

    Brightness b, contrast c and saturation s are drawn from U(1 - strength, 1 + strength) and
    applied in that order. All three are linear: b scales; c blends with the clip's mean grey
    m; s blends each pixel x with its own grey g = w . x. Composed:
    out = c b s x + c b (1 - s) g + (1 - c) b m, with one grey plane per frame.
    """
    if strength <= 0:
        return crops if uint8 else crops.float().div_(255.0)
    top = 255.0 if uint8 else 1.0
    brightness, contrast, saturation = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    weights = torch.tensor([GREY])
    # the mean of integers: its float32 sum is exact (below 2^24), so the same in any order
    mean_grey = float((crops[:, :, ::8, ::8].float().mean((0, 2, 3)) * weights[0]).sum())
    scale = contrast * brightness * top / 255.0
    offset = (1 - contrast) * brightness * mean_grey * top / 255.0 + (0.5 if uint8 else 0.0)
    count, _, height, width = crops.shape
    out = crops if uint8 else torch.empty(crops.shape, dtype=torch.float32)
    frames, results = crops.view(count, 3, -1), out.view(count, 3, -1)
    step = _chunk(height * width)
    pixels, grey = (buffers or _FrameBuffers()).get(step)
    for t, start in itertools.product(range(count), range(0, height * width, step)):
        piece = frames[t, :, start : start + step]
        x, g = pixels[:, : piece.shape[1]], grey[:, : piece.shape[1]]
        x.copy_(piece)
        torch.mm(weights, x, out=g)
        g.mul_(scale * (1 - saturation)).add_(offset)
        result = x if uint8 else results[t, :, start : start + step]
        torch.add(g, x, alpha=scale * saturation, out=result).clamp_(0.0, top)
        if uint8:  # numpy's float -> uint8 copy is several times faster than torch's
            np.copyto(piece.numpy(), x.numpy(), casting="unsafe")
    return out


def _chunk(pixels: int) -> int:
    """Pixels per step of the colour jitter: equal parts of a frame of at most CHUNK_PIXELS,
    whose float working set stays in the CPU's L2 cache (a whole 384 px frame would not)."""
    parts = -(-pixels // CHUNK_PIXELS)
    return -(-pixels // parts)


def _first_frame_objects(
    masks: torch.Tensor, max_objects: int, rng: random.Random
) -> tuple[torch.Tensor, int]:
    """uint8 labels where the objects of frame 0 (at most `max_objects`, a random choice when
    there are more) are 1..K in id order and everything else is 0 (`masks`, relabelled in
    place); and K."""
    values = masks.numpy()
    present = _ids_in(values[0])
    if len(present) > max_objects:
        present = sorted(rng.sample(present, max_objects))
    if present == list(range(1, len(present) + 1)) and int(values.max()) <= len(present):
        return masks, len(present)  # ids already 1..K (the common case)
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[present] = np.arange(1, len(present) + 1)
    np.take(lookup, values, out=values)  # 6x torch indexing; numpy buffers an `out` it reads
    return masks, len(present)


def _ids_in(mask: np.ndarray) -> list[int]:
    """The object ids (non-zero values) in a uint8 mask, ascending."""
    highest = int(mask.max())
    if highest > FEW_IDS:  # then one histogram is cheaper than a pass per id
        return [int(v) for v in np.flatnonzero(np.bincount(mask.ravel())[1:]) + 1]
    return [value for value in range(1, highest + 1) if (mask == value).any()]
