"""Fresh training clips every epoch: triples drawn from video windows at training time, gaps
within the curriculum's limit counted in raw frames, and online augmentation."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import webdataset as wds

from datagen.reader import GREY, NO_AUGMENT, Augment, ClipStream, _coloured, read_manifest
from datagen.sources import procedural_image_sources
from datagen.synthesis import ClipSettings
from tests.datagen.conftest import build_set
from tests.datagen.windows import write_windows


@pytest.fixture(scope="module")
def window_set(tmp_path_factory):
    """3 procedural videos of 12 frames, every frame annotated, windows for gaps up to 4."""
    torch.set_num_threads(1)
    return write_windows(str(tmp_path_factory.mktemp("windows")), videos=3, max_skip=4)


def _raw_frames(stream: ClipStream, epoch: int) -> dict[str, list[int]]:
    """The drawn clips of an epoch: sample key -> raw frame indices."""
    drawn = {}
    for sample in stream.dataset(epoch):
        key, indices = sample["clip"].split("@")
        drawn[key] = [int(i) for i in indices.split(",")]
    return drawn


def _gaps(drawn: dict[str, list[int]]) -> list[int]:
    return [b - a for indices in drawn.values() for a, b in itertools.pairwise(indices)]


def test_windows_hold_consecutive_frames_with_raw_indices_above_the_clip_size(window_set):
    manifest = read_manifest(window_set)
    assert manifest["window"] == {"max_skip": 4, "short_side": 55}  # 48 px clips x 1.15
    shard = f"{window_set}/{manifest['shards'][0]['name']}"
    for sample in wds.WebDataset(shard, shardshuffle=False).decode("rgb8"):
        record, count = sample["json"], len(sample["json"]["frame_indices"])
        assert record["kind"] == "window" and count == 9  # 2 x max_skip + 1 raw frames
        assert record["frame_indices"] == list(
            range(record["frame_indices"][0], count + record["frame_indices"][0])
        )
        assert sample[f"f{count - 1}.jpg"].shape == (55, 73, 3)  # 96 x 72 at short side 55
        assert sample[f"m{count - 1}.png"].shape[:2] == (55, 73)


def test_each_epoch_draws_new_clips_from_the_same_windows(window_set):
    stream = ClipStream(window_set, max_skip=4, seed=0)
    epochs = [_raw_frames(stream, epoch) for epoch in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])  # the same windows
    for a, b in itertools.combinations(epochs, 2):
        changed = sum(a[key] != b[key] for key in a)
        assert changed >= len(a) // 2, (a, b)
    assert _raw_frames(ClipStream(window_set, max_skip=4, seed=0), 1) == epochs[1]  # seeded


def test_no_gap_exceeds_the_epochs_maximum(window_set):
    seen_large = False
    for max_skip in (1, 2, 4):
        stream = ClipStream(window_set, max_skip=max_skip, seed=2)
        gaps = [gap for epoch in range(4) for gap in _gaps(_raw_frames(stream, epoch))]
        assert gaps and all(1 <= gap <= max_skip for gap in gaps), (max_skip, gaps)
        seen_large |= max(gaps) > 2
    assert seen_large  # the limit, not the windows, held the smaller ones back


def test_youtube_gaps_are_counted_in_raw_frames(youtube_folder, tmp_path):
    """YouTube-VOS is annotated every 5th frame: a gap limit of 10 allows 5 and 10 raw frames
    (1 or 2 annotated frames ahead), a limit of 5 or less the next annotated frame only."""
    url = write_windows(
        str(tmp_path / "ytvos"),
        source={"kind": "youtube", "path": str(youtube_folder)},
        max_skip=10,
    )
    gaps_at = {}
    for max_skip in (3, 5, 10):
        stream = ClipStream(url, max_skip=max_skip, seed=1)
        epochs = range(20)  # a gap of 10 needs the limit drawn at 10: 1 clip in 20 or so
        gaps_at[max_skip] = {gap for epoch in epochs for gap in _gaps(_raw_frames(stream, epoch))}
    assert gaps_at[3] == gaps_at[5] == {5}
    assert gaps_at[10] == {5, 10}


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    torch.set_num_threads(1)
    url = str(tmp_path_factory.mktemp("images"))
    found = procedural_image_sources(6, seed=3, width=96, height=72)
    build_set(url, found.sources, ClipSettings(size=48), clips_per_shard=3)
    return url


def _by_key(stream: ClipStream, epoch: int) -> dict[str, dict]:
    return {sample["key"]: sample for sample in stream.dataset(epoch)}


def test_online_augmentation_changes_the_pixels_of_fixed_clips_every_epoch(image_set):
    plain = ClipStream(image_set, augment=NO_AUGMENT)
    unchanged, still = _by_key(plain, 0), _by_key(plain, 1)
    assert all(torch.equal(unchanged[key]["frames"], still[key]["frames"]) for key in unchanged)
    augmented = ClipStream(image_set, augment=Augment(), seed=0)
    first, second = _by_key(augmented, 0), _by_key(augmented, 1)
    for key in first:
        assert not torch.equal(first[key]["frames"], second[key]["frames"]), key
        assert first[key]["frames"].min() >= 0 and first[key]["frames"].max() <= 1
    again = _by_key(ClipStream(image_set, augment=Augment(), seed=0), 1)
    assert all(torch.equal(again[key]["frames"], second[key]["frames"]) for key in first)


def _moved(image: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """`image` [..., S, S] shifted by (dy, dx) with zeros coming in, then maybe mirrored."""
    size = image.shape[-1]
    out = torch.zeros_like(image)
    ys, xs = slice(max(dy, 0), size + min(dy, 0)), slice(max(dx, 0), size + min(dx, 0))
    yt, xt = slice(max(-dy, 0), size + min(-dy, 0)), slice(max(-dx, 0), size + min(-dx, 0))
    out[..., yt, xt] = image[..., ys, xs]
    return out.flip(-1) if flip else out


def test_flip_and_crop_jitter_move_frames_and_masks_together(image_set):
    plain = _by_key(ClipStream(image_set, augment=NO_AUGMENT), 0)
    jittered = _by_key(
        ClipStream(image_set, augment=Augment(flip=True, colour_jitter=0.0, crop_jitter=0.1)), 0
    )
    moves = [(dy, dx, f) for dy in range(-5, 6) for dx in range(-5, 6) for f in (False, True)]
    flips = 0
    for key, sample in jittered.items():
        for t in range(3):
            frame, labels = plain[key]["frames"][t], plain[key]["labels"][t]
            match = [
                move
                for move in moves
                if torch.allclose(_moved(frame, *move), sample["frames"][t], atol=1e-6)
                and torch.equal(_moved(labels, *move), sample["labels"][t])
            ]
            assert match, (key, t)
            flips += match[0][2]
    assert 0 < flips < 3 * len(jittered)


def _jitter_in_steps(frames: torch.Tensor, strength: float, rng: random.Random) -> torch.Tensor:
    """The colour jitter as its definition reads (float64, values 0..255): brightness, then
    contrast against the clip's mean grey (on the reader's 8 px grid), then saturation against
    each pixel's own grey, clamped at the end."""
    brightness, contrast, saturation = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    weights = torch.tensor(GREY, dtype=torch.float64).view(1, 3, 1, 1)
    x = frames.double() * brightness
    mean_grey = float((x[:, :, ::8, ::8].mean((0, 2, 3)) * weights.view(3)).sum())
    x = contrast * x + (1 - contrast) * mean_grey
    x = saturation * x + (1 - saturation) * (x * weights).sum(1, keepdim=True)
    return x.clamp(0, 255)


def test_the_one_pass_colour_jitter_is_brightness_then_contrast_then_saturation():
    generator = torch.Generator().manual_seed(0)
    for size in (48, 200):  # one step per frame, and several (reader.CHUNK_PIXELS)
        crops = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=generator)
        crops[:, :, :6] = 250  # some pixels beyond 255 once brightened
        for seed in range(4):
            expected = _jitter_in_steps(crops, 0.4, random.Random(seed))
            floats = _coloured(crops.clone(), 0.4, random.Random(seed), uint8=False)
            assert floats.dtype == torch.float32
            assert torch.allclose(floats.double() * 255, expected, atol=1e-3)
            as_uint8 = _coloured(crops.clone(), 0.4, random.Random(seed), uint8=True)
            assert as_uint8.dtype == torch.uint8
            error = (as_uint8.double() - expected).abs()
            assert error.max() <= 0.5 + 1e-3  # rounded to the nearest level
    plain = crops.clone()
    assert _coloured(plain, 0.0, random.Random(0), uint8=True) is plain  # no jitter: as cropped
    assert torch.equal(_coloured(plain, 0.0, random.Random(0), uint8=False), plain.float() / 255)
