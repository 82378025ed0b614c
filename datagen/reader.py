"""Reading shard sets for training: `ClipStream` turns manifests into a torch IterableDataset.

    stream = ClipStream(["s3://data/msra/train", "s3://data/ecssd/train"], weights=[3, 1],
                        rank=rank, world_size=world_size, seed=0)
    steps = stream.samples_per_rank() // batch_size        # the same on every rank
    loader = DataLoader(stream.dataset(epoch), batch_size=batch_size, num_workers=4)
    for step, batch in zip(range(steps), loader): ...

Only sets with a `manifest.json` are read (`read_manifest` refuses the others).

**Ranks.** Shards are split between ranks by explicit `rank` / `world_size`, not by the
process environment. Each rank gets whole shards, balanced by sample count (largest first
to the rank with fewest samples); a set with fewer shards than ranks is split by samples
instead (every rank reads all its shards and keeps every `world_size`-th sample). Ranks never
share a sample, and no sample is read twice in an epoch.

**Equal step counts.** `samples_per_rank()` is the *minimum* over ranks of the samples a rank
reads in one epoch. Every rank yields at least that many, so `samples_per_rank() // batch`
steps never run out on any rank (DDP needs the same number of steps everywhere). A rank may
hold a few more samples; they are simply not reached in that epoch. Use
`DataLoader(drop_last=False)`: each DataLoader worker ends with its own partial batch, and
dropping those could leave fewer full batches than the step count.

**Workers.** Inside a DataLoader, a rank's shards are split again between workers (or its
samples, when it has fewer shards than workers). Decoding happens in the workers. For `s3://`
URLs an fsspec opener is registered with WebDataset; each worker process creates its own S3
filesystem (s3fs is not fork-safe; fsspec drops inherited instances in a forked child).

**Shuffling.** Shard order is shuffled per epoch (same order on all ranks, from `seed` and
the epoch), then samples pass a shuffle buffer of `shuffle_buffer` seeded by (seed, epoch,
rank, worker). The same arguments give the same stream.

**Several sets.** Without weights, the sets are pooled and read once per epoch. With
`weights`, each worker draws the next sample's set at random with those weights, cycling a
set that runs out (so a small, heavily weighted set repeats); an epoch is still
`samples_per_rank()` samples, now split evenly between the workers.

**Video curriculum.** Video clips record their `skip` (largest gap between their frames, in
annotated frames). The generator writes clips with skips from 1 to its `max_skip`; a reader
with `max_skip=k` drops clips with `skip > k` (counts come from the manifest's
`samples_by_skip`, so `samples_per_rank()` accounts for it). Image clips have no skip and
are never dropped.

Each sample is a dict:
    "frames":      float32 [3, 3, H, W] in [0, 1]
    "labels":      int64 [3, H, W]; the objects of frame 0 become 1..K (K <= max_objects, a
                   random choice when there are more); everything else is background 0
    "num_objects": K
    "key":         the sample key in its shard (prefixed "<set>/" when reading several sets)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.io import decode_jpeg, decode_png
from webdataset import gopen_schemes
from webdataset.tariterators import tarfile_samples

from core.storage import filesystem
from datagen.manifest import ManifestError, manifest_url, read_manifest, shard_url

__all__ = ["ClipStream", "ManifestError", "read_manifest", "register_fsspec_opener"]


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
    """WebDataset opener for fsspec URLs; the filesystem is created in the calling process."""
    fs, path = filesystem(url)
    return fs.open(path, mode)


def register_fsspec_opener(schemes: tuple[str, ...] = ("s3", "s3a")) -> None:
    """Let plain `webdataset` open these URL schemes through fsspec."""
    for scheme in schemes:
        gopen_schemes[scheme] = _fsspec_open


register_fsspec_opener()


@dataclass(frozen=True)
class _Shard:
    set_index: int
    url: str
    samples: int  # samples kept after the max_skip filter


@dataclass(frozen=True)
class _Part:
    """What one rank reads of one set: whole shards, or every `stride`-th sample from `offset`."""

    shards: tuple[_Shard, ...]
    stride: int = 1
    offset: int = 0

    def count(self) -> int:
        total = sum(shard.samples for shard in self.shards)
        if self.stride == 1:
            return total
        return max(0, (total - self.offset + self.stride - 1) // self.stride)


def _kept(entry: dict, max_skip: int | None) -> int:
    by_skip = entry.get("samples_by_skip")
    if max_skip is None or by_skip is None:
        return int(entry["samples"])
    return sum(count for skip, count in by_skip.items() if int(skip) <= max_skip)


def _split(shards: list[_Shard], rank: int, world_size: int) -> _Part:
    """Rank `rank`'s part: balanced whole shards, or a sample stride when shards are few."""
    if len(shards) < world_size:
        return _Part(tuple(shards), stride=world_size, offset=rank)
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    by_size = sorted(range(len(shards)), key=lambda i: (-shards[i].samples, i))
    for index in by_size:
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += shards[index].samples
        owned[target].append(index)
    return _Part(tuple(shards[i] for i in sorted(owned[rank])))


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
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.max_objects, self.max_skip = shuffle_buffer, max_objects, max_skip
        self.weights = None if weights is None else [float(w) for w in weights]
        self.manifests = [read_manifest(url) for url in urls]
        sizes = {m["clip"]["size"] for m in self.manifests}
        if len(sizes) > 1:
            raise ManifestError(
                f"the sets have different clip sizes {sorted(sizes)}; they cannot be batched together"
            )
        self.sets: list[list[_Shard]] = []
        for set_index, (url, manifest) in enumerate(zip(urls, self.manifests, strict=True)):
            location = manifest_url(url)
            self.sets.append(
                [
                    _Shard(set_index, shard_url(location, entry["name"]), _kept(entry, max_skip))
                    for entry in manifest["shards"]
                ]
            )

    # -- sizes ------------------------------------------------------------------------------
    def _parts(self, rank: int) -> list[_Part]:
        """The parts of each set (weighted) or of the pooled sets (unweighted) for `rank`."""
        if self.weights is None:
            pooled = [shard for shards in self.sets for shard in shards]
            return [_split(pooled, rank, self.world_size)]
        return [_split(shards, rank, self.world_size) for shards in self.sets]

    def samples_per_rank(self) -> int:
        """Samples every rank yields at least, per epoch: the minimum over ranks."""
        return min(
            sum(part.count() for part in self._parts(rank)) for rank in range(self.world_size)
        )

    def dataset(self, epoch: int = 0) -> IterableDataset:
        """The stream for one epoch (a fresh shuffle per epoch)."""
        return _ClipDataset(self, epoch)


class _ClipDataset(IterableDataset):
    def __init__(self, stream: ClipStream, epoch: int):
        super().__init__()
        self.stream, self.epoch = stream, epoch
        self.parts = stream._parts(stream.rank)
        self.epoch_length = stream.samples_per_rank()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.stream
        rng = random.Random(f"{stream.seed}/{self.epoch}/{stream.rank}/{worker}")
        if stream.weights is None:
            raw = self._part_samples(0, self.parts[0], worker, workers, cycle=0)
        else:
            quota = self.epoch_length // workers + (worker < self.epoch_length % workers)
            raw = self._mixed(worker, workers, quota, rng)
        shuffled = _shuffle(raw, stream.shuffle_buffer, rng)
        prefix = len(stream.sets) > 1
        for set_index, sample in shuffled:
            yield _decode(sample, stream.max_objects, rng, f"{set_index}/" if prefix else "")

    def _mixed(self, worker: int, workers: int, quota: int, rng: random.Random) -> Iterator:
        weights = list(self.stream.weights)
        streams = {
            i: self._endless(i, part, worker, workers)
            for i, part in enumerate(self.parts)
            if weights[i] > 0
        }
        produced = 0
        while produced < quota and streams:
            choices = sorted(streams)
            index = rng.choices(choices, weights=[weights[i] for i in choices])[0]
            sample = next(streams[index], None)
            if sample is None:  # this worker has nothing of that set
                del streams[index]
                continue
            produced += 1
            yield sample

    def _endless(self, set_index: int, part: _Part, worker: int, workers: int) -> Iterator:
        cycle = 0
        while True:
            empty = True
            for sample in self._part_samples(set_index, part, worker, workers, cycle):
                empty = False
                yield sample
            if empty:
                return
            cycle += 1

    def _part_samples(
        self, part_index: int, part: _Part, worker: int, workers: int, cycle: int
    ) -> Iterator:
        """(set index, raw sample) for this worker, in this epoch's shard order."""
        stream = self.stream
        order = list(part.shards)
        random.Random(f"{stream.seed}/{self.epoch}/{part_index}/{cycle}").shuffle(order)
        whole_shards = part.stride == 1 and len(order) >= workers
        shards = order[worker::workers] if whole_shards else order
        rank_index = worker_index = 0
        for shard in shards:
            for sample in _shard_samples(shard, stream.max_skip):
                if not whole_shards:
                    keep_rank = rank_index % part.stride == part.offset
                    rank_index += 1
                    if not keep_rank:
                        continue
                    keep_worker = worker_index % workers == worker
                    worker_index += 1
                    if not keep_worker:
                        continue
                yield shard.set_index, sample


def _shard_samples(shard: _Shard, max_skip: int | None) -> Iterator[dict]:
    """Raw samples of one shard that pass the skip filter; checks the count against the manifest."""
    count = 0
    for sample in tarfile_samples([{"url": shard.url}]):
        record = json.loads(sample["json"])
        if max_skip is not None and record.get("skip", 0) > max_skip:
            continue
        sample["record"] = record
        count += 1
        yield sample
    if count != shard.samples:
        raise ManifestError(
            f"{shard.url}: the manifest promises {shard.samples} samples, the shard holds {count}"
        )


def _shuffle(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: hold `size` samples, emit a random one for each new one."""
    if size <= 1:
        yield from samples
        return
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _decode(sample: dict, max_objects: int, rng: random.Random, key_prefix: str) -> dict:
    frame_names = sorted(name for name in sample if name.startswith("f") and name.endswith(".jpg"))
    frames = torch.stack(
        [
            decode_jpeg(torch.frombuffer(bytearray(sample[n]), dtype=torch.uint8))
            for n in frame_names
        ]
    )
    masks = torch.stack(
        [
            decode_png(
                torch.frombuffer(
                    bytearray(sample[n.replace("f", "m", 1).replace(".jpg", ".png")]),
                    dtype=torch.uint8,
                )
            )[0]
            for n in frame_names
        ]
    )
    present = [int(v) for v in torch.unique(masks[0]) if v != 0]
    if len(present) > max_objects:
        present = sorted(rng.sample(present, max_objects))
    lookup = torch.zeros(256, dtype=torch.int64)
    for new_id, old_id in enumerate(present, start=1):
        lookup[old_id] = new_id
    return {
        "frames": frames.float().div_(255.0),
        "labels": lookup[masks.long()],
        "num_objects": len(present),
        "key": key_prefix + sample["__key__"],
    }
