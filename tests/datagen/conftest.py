"""Fixtures for the data generation tests: tiny procedural datasets, with and without bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen.procedural import write_procedural_images, write_procedural_videos
from datagen.synthesis import ClipSettings

# The bad inputs planted by `bad_image_folder`, by the reason they must be counted under.
PLANTED_BAD = {
    "corrupt image": 1,  # a truncated JPEG
    "non-image file": 2,  # notes.txt, and text saved as .jpg
    "mask size mismatch": 1,
    "empty mask": 1,
    "unexpected mask values": 1,  # a noise image as mask
    "image without mask": 1,
    "mask without image": 1,
}
GOOD_PAIRS = 6


@pytest.fixture
def tiny_settings() -> ClipSettings:
    return ClipSettings(size=64)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Six good image + mask pairs (160 x 120) in the separate-folder layout."""
    return write_procedural_images(tmp_path / "images_set", GOOD_PAIRS, seed=3, size=(160, 120))


@pytest.fixture
def bad_image_folder(tmp_path) -> Path:
    """`image_folder` plus one input of every bad kind in PLANTED_BAD."""
    root = write_procedural_images(tmp_path / "bad_set", GOOD_PAIRS, seed=4, size=(160, 120))
    images, masks = root / "images", root / "masks"
    good = np.asarray(Image.open(images / "00000.jpg"))
    good_mask = Image.open(masks / "00000.png")

    truncated = (images / "00001.jpg").read_bytes()
    (images / "b_truncated.jpg").write_bytes(truncated[: len(truncated) // 3])
    good_mask.save(masks / "b_truncated.png")

    (images / "b_text.jpg").write_text("this is not a picture")
    good_mask.save(masks / "b_text.png")
    (images / "notes.txt").write_text("not an image at all")

    Image.fromarray(good).save(images / "b_size.jpg")
    good_mask.resize((80, 60)).save(masks / "b_size.png")

    Image.fromarray(good).save(images / "b_empty.jpg")
    Image.fromarray(np.zeros((120, 160), np.uint8)).save(masks / "b_empty.png")

    Image.fromarray(good).save(images / "b_noise.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (120, 160)).astype(np.uint8)
    Image.fromarray(noise).save(masks / "b_noise.png")

    Image.fromarray(good).save(images / "b_lonely.jpg")
    good_mask.save(masks / "b_orphan.png")
    return root


@pytest.fixture
def davis_folder(tmp_path) -> Path:
    return write_procedural_videos(tmp_path / "davis", 3, 10, seed=5, size=(96, 64), layout="davis")


@pytest.fixture
def youtube_folder(tmp_path) -> Path:
    return write_procedural_videos(
        tmp_path / "ytvos", 2, 31, seed=6, size=(96, 64), layout="youtube", num_objects=2
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """As in the Ray tasks: one thread per process (several threads on a shared 2-core machine
    spin against each other and run many times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_set(
    url: str,
    found_sources: list,
    settings: ClipSettings,
    *,
    kind: str = "image",
    clips_per_source: int = 1,
    clips_per_shard: int = 4,
    seed: int = 0,
    config_hash: str = "test",
) -> dict:
    """Make a shard set with the datagen functions alone (what each Ray task does, in a loop)."""
    from datagen.manifest import build_manifest, write_manifest
    from datagen.plan import plan_shards
    from datagen.shards import ShardSpec, build_shard

    planned = plan_shards(
        found_sources, clips_per_source=clips_per_source, clips_per_shard=clips_per_shard, seed=seed
    )
    results = [
        build_shard(ShardSpec(index, kind, tuple(clips), settings, config_hash), url)
        for index, clips in enumerate(planned)
    ]
    manifest = build_manifest(
        kind=kind,
        split=None,
        config={"test": True},
        config_hash=config_hash,
        source_fingerprint="test",
        size=settings.size,
        frames=settings.num_frames,
        shard_records=[result.record for result in results],
        skipped=[tuple(pair) for result in results for pair in result.record["skipped"]],
    )
    write_manifest(url, manifest)
    return manifest
