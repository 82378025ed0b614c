"""Shards: byte-identical output, plain WebDataset can read them, damaged shards are rebuilt."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import webdataset as wds

from datagen.plan import plan_shards
from datagen.shards import ShardSpec, build_shard
from datagen.sources import procedural_image_sources, scan_image_folders
from tests.datagen.conftest import PLANTED_BAD, build_set


def _spec(index: int, settings, seed: int = 0, config_hash: str = "h") -> ShardSpec:
    found = procedural_image_sources(6, seed=1, width=120, height=90)
    planned = plan_shards(found.sources, clips_per_source=1, clips_per_shard=3, seed=seed)
    return ShardSpec(index, "image", tuple(planned[index]), settings, config_hash)


def test_same_config_and_seed_give_byte_identical_shards(tmp_path, tiny_settings):
    first = build_shard(_spec(1, tiny_settings), str(tmp_path / "a"))
    second = build_shard(_spec(1, tiny_settings), str(tmp_path / "b"))
    other_seed = build_shard(_spec(1, tiny_settings, seed=1), str(tmp_path / "c"))
    a = (tmp_path / "a" / "shard-000001.tar").read_bytes()
    assert a == (tmp_path / "b" / "shard-000001.tar").read_bytes()
    assert first.record == second.record
    assert first.record["sha256"] == hashlib.sha256(a).hexdigest() and first.record["samples"] == 3
    assert other_seed.record["sha256"] != first.record["sha256"]


def test_shards_read_back_with_plain_webdataset(tmp_path, tiny_settings):
    build_shard(_spec(0, tiny_settings), str(tmp_path))
    dataset = wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode("rgb8")
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == ["000000_000000", "000000_000001", "000000_000002"]
    for sample in samples:
        assert {"f0.jpg", "f1.jpg", "f2.jpg", "m0.png", "m1.png", "m2.png", "json"} <= set(sample)
        assert sample["f2.jpg"].shape == (64, 64, 3)
        assert sample["m0.png"].shape[:2] == (64, 64)
        record = sample["json"]
        assert record["source"].startswith("procedural/") and isinstance(record["seed"], int)
        assert len(record["frames"]) == 3 and record["objects"] == [1]


def test_a_shard_is_kept_only_if_it_matches_its_record(tmp_path, tiny_settings):
    out = str(tmp_path)
    built = build_shard(_spec(0, tiny_settings), out)
    assert built.status == "written"
    assert build_shard(_spec(0, tiny_settings), out).status == "kept"

    tar = tmp_path / "shard-000000.tar"
    original = tar.read_bytes()
    tar.write_bytes(original[:-2000] + b"\1" * 2000)  # damaged in place
    rebuilt = build_shard(_spec(0, tiny_settings), out)
    assert rebuilt.status == "replaced" and tar.read_bytes() == original

    (tmp_path / "_shards" / "shard-000000.json").unlink()  # killed before the record was written
    assert build_shard(_spec(0, tiny_settings), out).status == "replaced"

    assert build_shard(_spec(0, tiny_settings, config_hash="other"), out).status == "replaced"
    assert (
        json.loads((tmp_path / "_shards" / "shard-000000.json").read_text())["config_hash"]
        == "other"
    )


def test_no_temporary_files_are_left_behind(tmp_path, tiny_settings):
    build_shard(_spec(0, tiny_settings), str(tmp_path))
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["shard-000000.json", "shard-000000.tar"]


def test_bad_inputs_are_skipped_and_counted_once(tmp_path, bad_image_folder, tiny_settings):
    scan = scan_image_folders(str(bad_image_folder), "images", "masks")
    manifest = build_set(
        str(tmp_path / "set"), scan.sources, tiny_settings, clips_per_source=2, clips_per_shard=5
    )
    load_reasons = {
        k: v
        for k, v in PLANTED_BAD.items()
        if k not in ("image without mask", "mask without image")
    }
    load_reasons["non-image file"] = 1  # the text saved as .jpg; notes.txt is found by the scan
    assert manifest["skipped"] == dict(sorted(load_reasons.items()))
    good = len(scan.sources) - sum(load_reasons.values())
    assert manifest["total_samples"] == 2 * good
    assert sum(entry["samples"] for entry in manifest["shards"]) == manifest["total_samples"]
    assert all(entry["bytes"] > 0 and len(entry["sha256"]) == 64 for entry in manifest["shards"])


def test_video_window_shards_are_byte_identical_and_read_back_checked(tmp_path):
    from datagen.generate import video_windows
    from datagen.shards import read_shard
    from datagen.sources import procedural_video_sources
    from datagen.synthesis import ClipSettings

    settings = ClipSettings(size=48, max_skip=2)
    windows = video_windows(procedural_video_sources(1, 3, 8, 96, 72).sources, settings)
    assert [window.positions for window in windows] == [
        (0, 1, 2, 3, 4),
        (2, 3, 4, 5, 6),
        (3, 4, 5, 6, 7),
    ]
    planned = plan_shards(windows, clips_per_source=1, clips_per_shard=3, seed=0)
    spec = ShardSpec(0, "video", tuple(planned[0]), settings, "h")
    first = build_shard(spec, str(tmp_path / "a"))
    build_shard(spec, str(tmp_path / "b"))
    tar = tmp_path / "a" / "shard-000000.tar"
    assert tar.read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    record = first.record
    samples = list(read_shard(str(tar), record["samples"], record["bytes"], record["sha256"]))
    assert len(samples) == 3
    for sample in samples:
        frames = json.loads(sample["json"])["frame_indices"]
        assert len(frames) == 5 and frames == list(range(frames[0], frames[0] + 5))
        assert {f"f{t}.jpg" for t in range(5)} | {f"m{t}.png" for t in range(5)} <= set(sample)


def test_background_regions_become_objects_of_the_clips(tmp_path, tiny_settings):
    """Each image's background region (the same in every shard) is one more object."""
    with_regions = dataclasses.replace(tiny_settings, background_regions=1)
    plain = build_shard(_spec(0, tiny_settings), str(tmp_path / "plain"))
    regions = build_shard(_spec(0, with_regions), str(tmp_path / "regions"))
    again = build_shard(_spec(0, with_regions), str(tmp_path / "again"))
    assert regions.record["sha256"] == again.record["sha256"] != plain.record["sha256"]
    samples = wds.WebDataset(str(tmp_path / "regions" / "shard-000000.tar"), shardshuffle=False)
    objects = [json.loads(sample["json"])["objects"] for sample in samples]
    assert sum(clip_objects == [1, 2] for clip_objects in objects) >= 2, objects
