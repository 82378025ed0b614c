"""The training reader: decoding, rank and worker splitting (exact counts), manifests, mixing."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from datagen.reader import Augment, ClipStream, ManifestError, collate_clips, read_manifest
from datagen.sources import procedural_image_sources
from datagen.synthesis import ClipSettings
from tests.datagen.conftest import build_set
from tests.datagen.windows import write_windows


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """23 clips in 6 shards (4, 4, 4, 4, 4, 3), up to 3 objects per clip."""
    torch.set_num_threads(1)
    url = str(tmp_path_factory.mktemp("image_set"))
    found = procedural_image_sources(23, seed=2, width=96, height=72, num_objects=3)
    build_set(url, found.sources, ClipSettings(size=48, min_object_area=0.002), clips_per_shard=4)
    return url


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    """Windows of 3 procedural videos of 12 frames (48 px clips, gaps up to 4)."""
    torch.set_num_threads(1)
    return write_windows(str(tmp_path_factory.mktemp("video_set")), videos=3, max_skip=4)


def _keys(stream: ClipStream, epoch: int = 0, workers: int = 0) -> list[str]:
    if workers == 0:
        return [sample["key"] for sample in stream.dataset(epoch)]
    loader = DataLoader(stream.dataset(epoch), batch_size=None, num_workers=workers)
    return [sample["key"] for sample in loader]


def test_samples_are_decoded_tensors_with_remapped_objects(image_set):
    samples = list(ClipStream(image_set, max_objects=2).dataset(0))
    assert len(samples) == 23
    for sample in samples:
        assert sample["frames"].shape == (3, 3, 48, 48) and sample["frames"].dtype == torch.float32
        assert sample["frames"].min() >= 0.0 and sample["frames"].max() <= 1.0
        assert sample["labels"].shape == (3, 48, 48) and sample["labels"].dtype == torch.int64
        k = sample["num_objects"]
        assert 1 <= k <= 2
        assert set(sample["labels"][0].unique().tolist()) == set(range(k + 1))
        assert sample["labels"].max() <= k
        assert sample["clip"] == sample["key"]  # an image clip is its key
    assert Counter(s["num_objects"] for s in samples)[2] > 0  # some clips had 3 objects, 2 kept


def test_two_ranks_get_disjoint_samples_and_exactly_samples_per_rank(image_set):
    ranks = [ClipStream(image_set, rank=rank, world_size=2, seed=3) for rank in range(2)]
    assert [stream.samples_held() for stream in ranks] == [12, 11]
    assert ranks[0].samples_per_rank() == ranks[1].samples_per_rank() == 11  # the smaller
    keys = [_keys(stream) for stream in ranks]
    assert not set(keys[0]) & set(keys[1])
    assert [len(k) for k in keys] == [len(set(k)) for k in keys] == [11, 11]


def test_dataloader_workers_split_a_rank_without_loss_or_repeats(image_set):
    stream = ClipStream(image_set, rank=1, world_size=2, seed=3)
    alone = _keys(stream)
    with_workers = _keys(stream, workers=2)
    assert sorted(with_workers) == sorted(alone) and len(set(alone)) == 11


def test_every_rank_and_worker_count_is_exact_with_uneven_shards(image_set, monkeypatch):
    """Shards of 4, 4, 4, 4, 4 and 3 clips over 2 ranks (12 and 11 clips) and 2 or 3 loader
    workers: every rank yields exactly samples_per_rank(), its workers together too, none
    twice."""
    for workers in (2, 3):
        for rank in range(2):
            stream = ClipStream(image_set, rank=rank, world_size=2, seed=1, shuffle_buffer=4)
            per_worker = []
            for worker in range(workers):  # the worker split, as webdataset sees a worker
                monkeypatch.setenv("WORKER", str(worker))
                monkeypatch.setenv("NUM_WORKERS", str(workers))
                per_worker.append(_keys(stream))
            keys = [key for chunk in per_worker for key in chunk]
            assert len(keys) == len(set(keys)) == stream.samples_per_rank() == 11, (rank, workers)
            assert all(chunk for chunk in per_worker)


def test_fewer_shards_than_ranks_are_split_by_samples(image_set):
    streams = [ClipStream(image_set, rank=rank, world_size=8) for rank in range(8)]
    assert all(s.samples_per_rank() == 2 for s in streams)  # 23 // 8
    every = [key for s in streams for key in _keys(s)]
    assert len(every) == len(set(every)) == 16


def test_epochs_shuffle_differently_and_repeat_with_the_seed(image_set):
    stream = ClipStream(image_set, seed=5, shuffle_buffer=8)
    assert _keys(stream, 0) == _keys(ClipStream(image_set, seed=5, shuffle_buffer=8), 0)
    assert _keys(stream, 0) != _keys(stream, 1)
    assert sorted(_keys(stream, 0)) == sorted(_keys(stream, 1))


def test_a_set_without_manifest_is_refused(tmp_path, image_set):
    shutil.copytree(image_set, tmp_path / "half")
    (tmp_path / "half" / "manifest.json").unlink()  # shards all there, manifest not yet written
    with pytest.raises(ManifestError) as error:
        ClipStream(str(tmp_path / "half"))
    message = str(error.value)
    assert "no manifest" in message and str(tmp_path / "half") in message and "\n" not in message
    with pytest.raises(ManifestError):
        read_manifest(str(tmp_path / "half" / "manifest.json"))


def test_a_shard_with_fewer_samples_than_promised_is_an_error(tmp_path, image_set):
    copy = tmp_path / "copy"
    shutil.copytree(image_set, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="promises"):
        _keys(ClipStream(str(copy)))


def test_a_video_set_of_fixed_clips_is_refused(tmp_path, video_set):
    shutil.copytree(video_set, tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    (tmp_path / "old" / "manifest.json").write_text(
        json.dumps({**manifest, "format": "vos-clips/1"})
    )
    with pytest.raises(ManifestError, match="fixed video clips .* regenerate"):
        ClipStream(str(tmp_path / "old"))


def test_weighted_mixing_of_two_sets(image_set, video_set):
    windows = read_manifest(video_set)["total_samples"]
    only_first = ClipStream([image_set, video_set], weights=[1, 0])
    keys = _keys(only_first)
    assert len(keys) == only_first.samples_per_rank() == 23 + windows
    assert all(key.startswith("0/") for key in keys)  # the image set, cycled to fill the epoch

    mixed = ClipStream([image_set, video_set], weights=[1, 1], seed=1)
    counts = Counter(key.split("/")[0] for key in _keys(mixed, workers=2))
    assert sum(counts.values()) == mixed.samples_per_rank()
    assert counts["0"] > 5 and counts["1"] > 5

    pooled = ClipStream([image_set, video_set])
    assert sorted(_keys(pooled)) == sorted(f"0/{k}" for k in _keys(ClipStream(image_set))) + sorted(
        f"1/{k}" for k in _keys(ClipStream(video_set))
    )


def _batches(stream: ClipStream, workers: int, batch_size: int | None = None) -> list[dict]:
    """The epoch's batches of 5: through collate_clips with `batch_size` given to the
    dataset, else as the DataLoader collates by default."""
    if batch_size is None:
        loader = DataLoader(stream.dataset(1), batch_size=5, num_workers=workers)
    else:
        loader = DataLoader(
            stream.dataset(1, batch_size),
            batch_size=5,
            num_workers=workers,
            collate_fn=collate_clips,
        )
    return list(loader)


def test_batches_written_in_one_block_are_the_default_batches_without_a_copy(image_set):
    stream = ClipStream(image_set, seed=4, augment=Augment(), uint8=True, max_objects=2)
    for workers in (0, 2):
        expected, blocks = _batches(stream, workers), _batches(stream, workers, batch_size=5)
        assert [len(b["key"]) for b in blocks] == [len(b["key"]) for b in expected]
        assert sum(len(b["key"]) for b in blocks) == 23  # short batches too
        for block, batch in zip(blocks, expected, strict=True):
            assert block.keys() == batch.keys()
            assert block["key"] == batch["key"] and block["clip"] == batch["clip"]
            for name in ("frames", "labels", "num_objects"):
                assert block[name].dtype == batch[name].dtype, name
                assert torch.equal(block[name], batch[name]), name
            storage = block["frames"].untyped_storage().data_ptr()  # one block, not copies
            assert block["labels"].untyped_storage().data_ptr() == storage


def test_collate_clips_copies_samples_that_are_not_in_one_block(image_set):
    samples = list(ClipStream(image_set, uint8=True).dataset(0))[:4]
    batch, expected = collate_clips(samples), default_collate(samples)
    assert torch.equal(batch["frames"], expected["frames"])
    assert torch.equal(batch["num_objects"], expected["num_objects"])
    assert batch["key"] == expected["key"]
    assert batch["frames"].untyped_storage().data_ptr() != samples[0]["frames"].data_ptr()
