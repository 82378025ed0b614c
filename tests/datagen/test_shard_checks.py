"""Shards are checked where they are read: a changed byte, a damaged tar header, a missing
shard each stop the stream with one line naming the shard, or are skipped and counted."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from datagen.reader import ClipStream, ShardError
from datagen.sources import procedural_image_sources
from datagen.synthesis import ClipSettings
from tests.datagen.conftest import build_set

BAD = "shard-000001.tar"


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory) -> Path:
    """9 image clips in 3 shards of 3."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("clean")
    found = procedural_image_sources(9, seed=5, width=96, height=72)
    build_set(str(folder), found.sources, ClipSettings(size=48), clips_per_shard=3)
    return folder


@pytest.fixture
def shard_set(clean_set, tmp_path) -> Path:
    copy = tmp_path / "set"
    shutil.copytree(clean_set, copy)
    return copy


def _member_offsets(tar: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (header offset, data offset, data size) of every member."""
    with tarfile.open(tar) as archive:
        return {m.name: (m.offset, m.offset_data, m.size) for m in archive.getmembers()}


def _flip_in_jpeg_data(tar: Path, member: str = "000001_000001.f1.jpg") -> None:
    """A byte in the middle of a JPEG's entropy-coded data: it still decodes."""
    _, data_at, size = _member_offsets(tar)[member]
    _flip_byte(tar, data_at + size * 2 // 3)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _read_all(stream: ClipStream, workers: int = 0) -> list[str]:
    loader = DataLoader(stream.dataset(0), batch_size=None, num_workers=workers)
    return [sample["key"] for sample in loader]


def _one_line_naming_the_bad_shard(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and BAD in message, message
    return message


@pytest.mark.parametrize("workers", [0, 1])
def test_a_changed_byte_stops_the_stream_in_one_line(shard_set, workers):
    """One byte of a JPEG inside a shard: it decodes, so only the sha256 can tell."""
    _flip_in_jpeg_data(shard_set / BAD)
    with pytest.raises(ShardError) as error:
        _read_all(ClipStream(str(shard_set)), workers)
    assert "sha256 does not match" in _one_line_naming_the_bad_shard(error)


def test_skip_mode_skips_and_counts_a_bad_shard_across_loader_workers(shard_set):
    _flip_in_jpeg_data(shard_set / BAD)
    stream = ClipStream(str(shard_set), bad_shards="skip")
    keys = _read_all(stream, workers=1)
    assert stream.skipped_shards() == 1  # counted in the worker process, seen here
    assert len(keys) == stream.samples_per_rank() == 9  # the others' clips fill the epoch
    assert len([key for key in keys if key.startswith("000001_")]) == 2  # read before the check
    assert _read_all(ClipStream(str(shard_set), verify=False)) != []  # hashing off: not seen


def test_a_frame_that_no_longer_decodes_names_the_shard(shard_set):
    _, data_at, _ = _member_offsets(shard_set / BAD)["000001_000001.f1.jpg"]
    _flip_byte(shard_set / BAD, data_at + 20)  # in the JPEG's tables
    with pytest.raises(ShardError) as error:
        _read_all(ClipStream(str(shard_set), verify=False))  # found without the hash too
    assert "000001_000001" in _one_line_naming_the_bad_shard(error)


def test_a_damaged_tar_header_names_the_shard(shard_set):
    header_at, _, _ = _member_offsets(shard_set / BAD)["000001_000001.json"]
    _flip_byte(shard_set / BAD, header_at + 3)  # in the member's name: the header checksum fails
    with pytest.raises(ShardError) as error:
        _read_all(ClipStream(str(shard_set)))
    assert "000001_000001" in _one_line_naming_the_bad_shard(error)


def test_a_deleted_shard_is_named_when_it_is_read(shard_set):
    (shard_set / BAD).unlink()
    with pytest.raises(ShardError) as error:
        _read_all(ClipStream(str(shard_set)))
    assert "is missing" in _one_line_naming_the_bad_shard(error)
    skipping = ClipStream(str(shard_set), bad_shards="skip")
    assert len(_read_all(skipping)) == 9 and skipping.skipped_shards() == 1
