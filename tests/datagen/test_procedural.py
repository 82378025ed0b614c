"""Procedural scene styles: the "distractors" style must be solvable only with the mask.

Checked here: scenes are a pure function of the seed; every object is in the label map
with its id (and survives palette encoding); look-alikes are close in colour yet distinct;
crossing objects occlude each other, objects in lanes never touch; saturation no longer
tells object from background (while in the classic style it does, which is why a mask-blind
model did well there); and the generation job's procedural sources render their style.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from datagen import procedural
from datagen.sources import procedural_image_sources, procedural_video_sources, scan_davis

DISTRACTORS = procedural.STYLES["distractors"]
LOOKALIKES = dataclasses.replace(DISTRACTORS, lookalike=1.0)
CROSSING = dataclasses.replace(DISTRACTORS, lookalike=1.0, crossing=1.0)


def _saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of a uint8 [H, W, 3] image."""
    rgb = image.astype(np.float32)
    high, low = rgb.max(-1), rgb.min(-1)
    return (high - low) / np.maximum(high, 1)


def _saturation_margin(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean saturation of the object pixels minus that of the background pixels."""
    saturation = _saturation(image)
    return float(saturation[labels > 0].mean() - saturation[labels == 0].mean())


def test_scenes_are_a_pure_function_of_the_seed():
    image, labels = procedural.render_image(5, (80, 60), 3, style="distractors")
    again, again_labels = procedural.render_image(5, (80, 60), 3, style="distractors")
    other, _ = procedural.render_image(6, (80, 60), 3, style="distractors")
    assert np.array_equal(image, again) and np.array_equal(labels, again_labels)
    assert not np.array_equal(image, other)

    frames, labels = procedural.render_video(5, 6, (80, 60), 3, style=CROSSING)
    again, again_labels = procedural.render_video(5, 6, (80, 60), 3, style=CROSSING)
    assert np.array_equal(frames, again) and np.array_equal(labels, again_labels)


def test_the_classic_style_is_the_default():
    default = procedural.render_video(2, 4, (64, 48), 2)
    classic = procedural.render_video(2, 4, (64, 48), 2, style="classic")
    assert all(np.array_equal(a, b) for a, b in zip(default, classic, strict=True))
    with pytest.raises(ValueError, match="unknown scene style"):
        procedural.render_image(0, 32, style="saliency")
    with pytest.raises(ValueError, match="textures"):
        procedural.SceneStyle(textures=("dots",))
    with pytest.raises(ValueError, match="pick one"):
        procedural.SceneStyle(crossing=0.5, lanes=True)


@pytest.mark.parametrize("num_objects", [2, 3, 5])
def test_every_object_is_in_the_label_map_with_its_id(num_objects):
    for seed in range(8):
        _, labels = procedural.render_image(seed, (96, 72), num_objects, style="distractors")
        assert set(np.unique(labels)) <= set(range(num_objects + 1))
        assert len(np.unique(labels)) >= num_objects  # at most one hidden under the others
        _, video = procedural.render_video(seed, 3, (96, 72), num_objects, style="distractors")
        assert set(np.unique(video[0])) <= set(range(num_objects + 1))


def test_object_ids_survive_the_palette_masks(tmp_path):
    root = procedural.write_procedural_videos(
        tmp_path, 2, 3, seed=1, size=(64, 48), num_objects=3, style="distractors"
    )
    for index, source in enumerate(scan_davis(str(root)).sources):
        _, expected = procedural.render_video(
            1 * 1_000_003 + index, 3, (64, 48), 3, style="distractors"
        )
        for t in range(3):
            assert np.array_equal(source.load_frame(t)[1], expected[t])


def test_lookalikes_are_close_in_colour_but_distinct():
    distances = []
    for seed in range(20):
        image, labels = procedural.render_image(seed, (96, 72), 2, style=LOOKALIKES)
        first, second = (image[labels == k].astype(np.float32) for k in (1, 2))
        distances.append(np.linalg.norm(first.mean(0) - second.mean(0)))
    # mean colours a few tens of levels apart (0..255 RGB): same family, different objects
    assert min(distances) > 8 and max(distances) < 50, distances


def test_crossing_objects_hide_parts_of_each_other():
    """In a crossing video an object loses visible area where the other passes in front."""
    occluded = 0
    for seed in range(6):
        _, labels = procedural.render_video(seed, 12, (96, 72), 2, style=CROSSING)
        areas = np.stack([(labels == k).sum((1, 2)) for k in (1, 2)])  # [2, T]
        for k in range(2):
            t = int(areas[k].argmin())
            behind = ndimage.binary_dilation(labels[t] == k + 1) & (labels[t] == 2 - k)
            inside = not _touches_border(labels[t] == k + 1)
            if areas[k, t] < 0.7 * areas[k].max() and behind.any() and inside:
                occluded += 1
    assert occluded >= 4, occluded


def test_objects_in_lanes_never_touch():
    """With `lanes` each object bounces in its own strip, outline and wobble included."""
    style = dataclasses.replace(LOOKALIKES, object_radius=(0.16, 0.3), crossing=0.0, lanes=True)
    sides = set()
    for seed in range(10):
        _, labels = procedural.render_video(seed, 12, (64, 48), 2, style=style)
        for frame in labels:
            assert not (ndimage.binary_dilation(frame == 1) & (frame == 2)).any(), seed
        sides.add(bool(np.argwhere(labels[0] == 1)[:, 1].mean() < 32))
    assert sides == {True, False}  # object 1 is on the left in some videos, on the right in others


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_saturation_does_not_say_object_any_more():
    """Over many scenes, object pixels are not much more saturated than the background."""
    scenes = range(120)
    classic = [_saturation_margin(*procedural.render_image(s, (48, 36), 3)) for s in scenes]
    hard = [
        _saturation_margin(*procedural.render_image(s, (48, 36), 3, style="distractors"))
        for s in scenes
    ]
    # the classic style gives it away: objects are more saturated in every scene
    assert np.mean(classic) > 0.5 and np.mean(np.array(classic) > 0) == 1.0
    assert abs(np.mean(hard)) < 0.15, np.mean(hard)
    assert np.mean(np.array(hard) > 0) < 0.75


# The fingerprint `procedural_video_sources(3, 2, 8, 96, 72, 2, True)` had before there were
# styles: classic sets must keep it.
CLASSIC_VIDEOS_FINGERPRINT = "d71442579089bda85aa742d5292e2461e79d69e4e69a79b742930c7b7573ebca"


def test_procedural_sources_render_their_style():
    """A lookalike_lanes source gives that style's scenes: two look-alikes in separate lanes."""
    found = procedural_video_sources(2, 3, 6, 64, 48, 2, style="lookalike_lanes")
    for index, source in enumerate(found.sources):
        expected = procedural.render_video(
            3 * 1_000_003 + index, 6, (64, 48), 2, style="lookalike_lanes"
        )
        loaded = [source.load_frame(t) for t in range(6)]
        frames, labels = np.stack([f for f, _ in loaded]), np.stack([m for _, m in loaded])
        assert np.array_equal(frames, expected[0]) and np.array_equal(labels, expected[1])
        columns = [set(np.flatnonzero((labels == k).any(axis=(0, 1)))) for k in (1, 2)]
        assert columns[0] and columns[1] and not columns[0] & columns[1]  # each in its own lane
        colours = [frames[labels == k].astype(np.float32).mean(0) for k in (1, 2)]
        assert np.linalg.norm(colours[0] - colours[1]) < 50  # look-alikes
    image, labels = (
        procedural_image_sources(1, 3, 64, 48, 2, style="lookalike_lanes").sources[0].load()
    )
    expected = procedural.render_image(3 * 1_000_003, (64, 48), 2, style="lookalike_lanes")
    assert np.array_equal(image, expected[0]) and np.array_equal(labels, expected[1])


def test_the_style_is_in_the_fingerprint_except_the_classic_one():
    classic = procedural_video_sources(2, 3, 6, 64, 48, 2)
    assert procedural_video_sources(2, 3, 6, 64, 48, 2, style="classic").fingerprint == (
        classic.fingerprint
    )
    assert procedural_video_sources(3, 2, 8, 96, 72, 2, True).fingerprint == (
        CLASSIC_VIDEOS_FINGERPRINT
    )
    for style in ("lookalike_lanes", "distractors"):
        assert procedural_video_sources(2, 3, 6, 64, 48, 2, style=style).fingerprint != (
            classic.fingerprint
        )
        assert procedural_image_sources(2, 3, 64, 48, 2, style=style).fingerprint != (
            procedural_image_sources(2, 3, 64, 48, 2).fingerprint
        )
    with pytest.raises(ValueError, match="unknown scene style 'fancy'; choose one of classic"):
        procedural_video_sources(2, 3, 6, 64, 48, 2, style="fancy")
