"""The Ray job end to end: real Ray cluster, real S3 endpoint, real kill and rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from torch.utils.data import DataLoader

from core.config import ConfigError, config_hash, load_config
from datagen.generate import scan
from datagen.manifest import read_manifest
from datagen.reader import ClipStream
from pipelines.generate import GenerateConfig, GenerateError, main, run
from tests.datagen.conftest import GOOD_PAIRS, PLANTED_BAD

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This process connected to the test cluster once, so the jobs below share warm workers
    (`run` leaves a Ray it did not start connected)."""
    import ray

    if not ray.is_initialized():  # an earlier stage may have connected this process already
        ray.init(address=ray_cluster.gcs_address)
    yield ray
    ray.shutdown()


def _procedural_config(url: str, **clips) -> dict:
    return {
        "source": {
            "kind": "procedural_images",
            "procedural": {"count": 40, "width": 96, "height": 72},
        },
        "output": {"url": url},
        "clips": {"size": 48, "clips_per_shard": 4, **clips},
        "seed": 7,
    }


def test_job_makes_a_complete_set_and_counts_bad_inputs(ray_driver, bad_image_folder, tmp_path):
    out = tmp_path / "clips"
    config = load_config(
        GenerateConfig,
        overrides=[
            "source.kind=images",
            f"source.path={bad_image_folder}",
            "source.image_dir=images",
            "source.mask_dir=masks",
            f"output.url={out}",
            "output.split=train",
            "clips.size=48",
            "clips.clips_per_shard=3",
        ],
    )
    summary = run(config)

    assert summary["skipped"] == dict(sorted(PLANTED_BAD.items()))
    assert summary["clips"] == GOOD_PAIRS and summary["shards_written"] == summary["shards"]
    manifest = read_manifest(str(out / "train"))
    assert manifest["total_samples"] == GOOD_PAIRS and manifest["split"] == "train"
    assert manifest["version"] == "0.1.0" and len(manifest["config_hash"]) == 64
    assert manifest["config"]["clips"]["size"] == 48 and "output" not in manifest["config"]
    stream = ClipStream(str(out / "train"))
    assert len([sample for sample in stream.dataset(0)]) == GOOD_PAIRS


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_killed_job_rerun_ends_with_the_same_manifest(ray_driver, tmp_path):
    config_file = tmp_path / "generate.yaml"
    config_file.write_text(yaml.safe_dump(_procedural_config(str(tmp_path / "unused"))))
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    run(load_config(GenerateConfig, config_file, [f"output.url={whole}"]))

    job = subprocess.Popen(
        [
            sys.executable,
            "pipelines/generate.py",
            "--config",
            str(config_file),
            f"output.url={killed}",
            "ray.max_tasks_in_flight=1",
        ],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: len(list((killed / "_shards").glob("*.json"))) >= 2, 120, "two finished shards"
        )
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert not (killed / "manifest.json").exists()
    done = sorted(killed.glob("shard-*.tar"))
    assert 2 <= len(done) < 10
    done[0].write_bytes(done[0].read_bytes()[:1000])  # and one finished shard gets damaged

    summary = run(load_config(GenerateConfig, config_file, [f"output.url={killed}"]))

    assert (killed / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    for shard in sorted(whole.glob("shard-*.tar")):
        assert (killed / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert summary["shards_kept"] >= 1 and summary["shards_replaced"] >= 1
    assert summary["shards_kept"] + summary["shards_replaced"] + summary["shards_written"] == 10


def test_s3_output_and_reading_it_back_in_dataloader_workers(ray_driver, s3_endpoint):
    bucket = s3_endpoint.make_bucket("datagen-job")
    config = GenerateConfig.model_validate(_procedural_config(f"{bucket}/pretrain", num_clips=10))
    summary = run(config)
    assert summary["clips"] == 10 and summary["manifest"] == f"{bucket}/pretrain/manifest.json"

    stream = ClipStream(f"{bucket}/pretrain", seed=1)
    loader = DataLoader(stream.dataset(0), batch_size=None, num_workers=2)  # each worker: own s3fs
    keys = [sample["key"] for sample in loader]
    assert sorted(keys) == sorted(
        f"{s:06d}_{c:06d}" for s in range(3) for c in range(4) if s * 4 + c < 10
    )


def test_unreachable_storage_fails_before_any_work_in_one_line(monkeypatch, capsys):
    with socket_closed() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        started = time.monotonic()
        code = main(["source.kind=procedural_images", "output.url=s3://clips/set"])
    assert code == 2 and time.monotonic() - started < 20
    output = capsys.readouterr()
    error = output.err.strip()
    assert "\n" not in error and "s3://clips/set" in error and "cannot be reached" in error
    assert "generate:" not in output.out  # failed before scanning the source or starting Ray


def test_bad_config_values_are_reported_one_line_each(capsys, tmp_path):
    code = main(["source.kind=pictures", "clips.size=8", f"output.url={tmp_path}"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("config error") for line in lines)
    assert any("source.kind" in line for line in lines) and any(
        "clips.size" in line for line in lines
    )
    with pytest.raises(ConfigError, match="source.path is required"):
        load_config(GenerateConfig, overrides=["source.kind=davis", f"output.url={tmp_path}"])


def test_the_procedural_scene_style_is_a_config_option(capsys, tmp_path):
    """source.procedural.style reaches every source, the fingerprint and the set's hash; a
    classic config hashes as it did before there were styles; an unknown style is one line."""
    base = ["source.kind=procedural_videos", "source.procedural.count=2", f"output.url={tmp_path}"]
    classic = load_config(GenerateConfig, overrides=base)
    styled = load_config(
        GenerateConfig, overrides=[*base, "source.procedural.style=lookalike_lanes"]
    )
    found = scan(styled.source)
    assert [source.style for source in found.sources] == ["lookalike_lanes"] * 2
    assert found.fingerprint != scan(classic.source).fingerprint
    assert "style" not in classic.content()["source"]["procedural"]
    assert config_hash(styled.content()) != config_hash(classic.content())

    assert main([*base, "source.procedural.style=fancy"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "source.procedural.style = 'fancy'" in error
    assert "choose one of classic, distractors, lookalike_lanes" in error


def test_a_set_made_with_another_config_is_not_mixed_in(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "manifest.json").write_text(
        '{"format": "vos-clips/1", "shards": [], "config_hash": "abc"}'
    )
    config = GenerateConfig.model_validate(_procedural_config(str(out)))
    with pytest.raises(GenerateError, match="another config"):
        run(config)
    assert (out / "manifest.json").exists()


class socket_closed:
    """A loopback port with nothing listening."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


def test_a_missing_source_folder_is_one_line(capsys, tmp_path):
    code = main(
        [
            "source.kind=davis",
            f"source.path={tmp_path / 'nowhere'}",
            f"output.url={tmp_path / 'out'}",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error == f"source.path {tmp_path / 'nowhere'}: no such folder"


@pytest.mark.parametrize(("option", "value"), [("background_regions", 1), ("fit_source", True)])
def test_image_only_clip_options_are_outside_old_hashes(capsys, tmp_path, option, value):
    """clips.background_regions and clips.fit_source reach the clip settings and the set's
    hash (a set made without them keeps its hash); a video source refuses them in one line."""
    base = ["source.kind=procedural_images", "source.procedural.count=2", f"output.url={tmp_path}"]
    plain = load_config(GenerateConfig, overrides=base)
    changed = load_config(GenerateConfig, overrides=[*base, f"clips.{option}={value}"])
    assert option not in plain.content()["clips"]
    assert config_hash(changed.content()) != config_hash(plain.content())
    assert getattr(changed.clip_settings(), option) == value

    videos = [
        "source.kind=procedural_videos",
        "source.procedural.count=2",
        f"output.url={tmp_path}",
    ]
    assert main([*videos, f"clips.{option}={value}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"clips.{option} is for image sources" in error
