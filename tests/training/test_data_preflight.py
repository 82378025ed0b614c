"""Before the first step (and before Ray is touched) a run lists every shard set once: a deleted
or truncated shard is named in one line; a plan that replays a few image clips many times is
warned about in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training.config import PretrainConfig
from training.driver import PreflightError, preflight, run_training

NO_RAY = "cluster.address=127.0.0.1:1"  # were Ray touched, the error would be a connection error


@pytest.fixture
def shard_copy(local_image_shards, tmp_path) -> Path:
    """The 36-clip image set (5 shards), copied so that it can be damaged."""
    copy = tmp_path / "shards"
    shutil.copytree(Path(local_image_shards).parent, copy)
    return copy


def _config(make_tiny_config, shards: Path, tmp_path: Path, *overrides: str):
    return make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{shards / 'manifest.json'}]",
        f"run.storage_path={tmp_path / 'runs'}",
        f"tracking.uri={tmp_path / 'mlruns'}",
        NO_RAY,
        *overrides,
    )


def _preflight_error(config) -> str:
    with pytest.raises(PreflightError) as raised:
        run_training(config)
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_a_deleted_shard_is_found_before_any_step(make_tiny_config, shard_copy, tmp_path):
    (shard_copy / "shard-000002.tar").unlink()
    message = _preflight_error(_config(make_tiny_config, shard_copy, tmp_path))
    assert str(shard_copy / "manifest.json") in message
    assert "1 of 5 shards" in message and "shard-000002.tar is missing" in message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_truncated_shard_is_found_before_any_step(make_tiny_config, shard_copy, tmp_path):
    shard = shard_copy / "shard-000001.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:1000])
    message = _preflight_error(_config(make_tiny_config, shard_copy, tmp_path))
    assert f"shard-000001.tar has 1000 bytes, the manifest says {size}" in message


def test_replaying_image_clips_many_times_is_warned_about(
    make_tiny_config, local_image_shards, tmp_path, capsys
):
    shards = Path(local_image_shards).parent
    places = str(tmp_path / "runs"), str(tmp_path / "mlruns")
    preflight(_config(make_tiny_config, shards, tmp_path, "train.epochs=4"), *places)
    assert "image clip" not in capsys.readouterr().out  # 36 clips, 4 epochs: 4 times each

    preflight(_config(make_tiny_config, shards, tmp_path, "train.epochs=30"), *places)
    lines = [line for line in capsys.readouterr().out.splitlines() if "image clip" in line]
    assert len(lines) == 1, lines
    assert "about 27 times" in lines[0] and "clips.clips_per_source" in lines[0]


def test_shards_on_s3_are_checked_with_one_listing(local_image_shards, s3_endpoint):
    from core.storage import filesystem
    from datagen.manifest import read_manifest
    from training.data import shard_problems

    bucket = s3_endpoint.make_bucket("preflight-shards")
    fs, _ = filesystem(bucket)
    fs.put(str(Path(local_image_shards).parent) + "/", f"{bucket}/set/", recursive=True)
    url = f"{bucket}/set/manifest.json"
    manifest = read_manifest(url)
    assert shard_problems(url, manifest) is None
    fs.rm_file(f"{bucket}/set/shard-000003.tar")
    assert shard_problems(url, manifest) == (
        "1 of 5 shards do not match the manifest: shard-000003.tar is missing"
    )
