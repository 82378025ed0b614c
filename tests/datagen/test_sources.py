"""Sources: pairing rules, decoding (core's decoder), bad input, video layouts, procedural
determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from core.masks import mask_labels
from datagen import procedural, sources
from datagen.sources import (
    BadInput,
    decode_image,
    decode_mask,
    load_pair,
    scan_davis,
    scan_image_folders,
    scan_youtube,
)
from tests.core.mask_cases import BAD_MASKS, MASK_CASES, png
from tests.datagen.conftest import GOOD_PAIRS, PLANTED_BAD


def test_separate_folders_pair_by_stem_and_report_unmatched(image_folder):
    (image_folder / "images" / "lonely.jpg").write_bytes(
        (image_folder / "images" / "00000.jpg").read_bytes()
    )
    (image_folder / "masks" / "orphan.png").write_bytes(
        (image_folder / "masks" / "00000.png").read_bytes()
    )
    (image_folder / "images" / "README.txt").write_text("hello")
    (image_folder / "images" / ".DS_Store").write_bytes(b"\0")

    scan = scan_image_folders(str(image_folder), "images", "masks")

    assert [s.source_id for s in scan.sources] == [f"images/{i:05d}.jpg" for i in range(GOOD_PAIRS)]
    assert all(
        s.mask_id == s.source_id.replace("images/", "masks/").replace(".jpg", ".png")
        for s in scan.sources
    )
    assert {(s.source, s.reason) for s in scan.skipped} == {
        ("images/lonely.jpg", sources.UNMATCHED_IMAGE),
        ("masks/orphan.png", sources.UNMATCHED_MASK),
        ("images/README.txt", sources.NOT_IMAGE),
    }


def test_same_folder_layout_like_msra10k(tmp_path):
    root = procedural.write_procedural_images(tmp_path / "msra", 4, seed=1, size=64, layout="same")
    (root / "extra.png").write_bytes((root / "00000.png").read_bytes())

    scan = scan_image_folders(str(root))

    assert [s.source_id for s in scan.sources] == [f"{i:05d}.jpg" for i in range(4)]
    assert [(s.source, s.reason) for s in scan.skipped] == [("extra.png", sources.UNMATCHED_MASK)]
    image, labels = scan.sources[0].load()
    assert image.shape == (64, 64, 3) and set(np.unique(labels)) == {0, 1}


def test_configurable_mask_pattern(tmp_path):
    root = procedural.write_procedural_images(tmp_path / "set", 2, seed=1, size=64)
    for mask in (root / "masks").iterdir():
        mask.rename(mask.with_name(mask.stem + "_gt.png"))
    assert len(scan_image_folders(str(root), "images", "masks").sources) == 0
    assert (
        len(scan_image_folders(str(root), "images", "masks", mask_pattern="{stem}_gt.png").sources)
        == 2
    )


def test_every_kind_of_bad_input_is_counted_by_reason(bad_image_folder):
    scan = scan_image_folders(str(bad_image_folder), "images", "masks")
    reasons = Counter(s.reason for s in scan.skipped)
    for source in scan.sources:
        try:
            source.load()
        except BadInput as bad:
            reasons[bad.reason] += 1
    assert reasons == Counter(PLANTED_BAD)


@pytest.mark.parametrize("case", MASK_CASES)
def test_masks_decode_as_the_core_decoder_does(case):
    data, expected = MASK_CASES[case]
    decoded = decode_mask(data, "m.png")
    np.testing.assert_array_equal(decoded, mask_labels(data, "m.png"))
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("case", BAD_MASKS)
def test_a_mask_no_rule_reads_is_skipped_with_its_name(case):
    with pytest.raises(BadInput) as error:
        decode_mask(BAD_MASKS[case][0], "masks/x.png")
    assert error.value.reason == sources.BAD_MASK_VALUES
    assert str(error.value).startswith("masks/x.png: unexpected mask values (")


def test_a_16_bit_grey_image_is_scaled_not_white():
    ramp = np.linspace(0, 65535, 100 * 160).reshape(100, 160).astype(np.uint16)  # mean 32767.5
    image, labels = load_pair(png(ramp), MASK_CASES["0/255 binary"][0], "x.png", "m.png")
    assert image.shape == (100, 160, 3) and image.dtype == np.uint8
    assert abs(image.mean() - 127.5) < 0.5  # was ~252: PIL clips 16-bit values to white
    np.testing.assert_array_equal(decode_image(png(ramp), "x.png"), image)
    assert labels.sum() == 400


def test_davis_layout(davis_folder):
    scan = scan_davis(str(davis_folder))
    assert [s.source_id for s in scan.sources] == ["seq000", "seq001", "seq002"]
    video = scan.sources[0]
    assert video.frame_indices() == list(range(10))
    image, labels = video.load_frame(4)
    assert image.shape == (64, 96, 3)
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.any()
    assert scan_davis(str(davis_folder), sequences=["seq001"]).sources[0].source_id == "seq001"


def test_youtube_layout_sparse_annotations_and_late_objects(youtube_folder):
    scan = scan_youtube(str(youtube_folder))
    assert len(scan.sources) == 2 and not scan.skipped
    video = scan.sources[0]
    assert video.frame_indices() == [0, 5, 10, 15, 20, 25, 30]  # only annotated frames are used
    first = video.load_frame(0)[1]
    later = video.load_frame(len(video.frames) - 1)[1]
    assert 2 not in np.unique(first) and 2 in np.unique(later)  # the second object enters late


def test_sequence_with_too_few_annotated_frames_is_skipped(davis_folder):
    annotations = davis_folder / "Annotations" / "480p" / "seq002"
    for mask in sorted(annotations.iterdir())[2:]:
        mask.unlink()
    scan = scan_davis(str(davis_folder))
    assert [s.source_id for s in scan.sources] == ["seq000", "seq001"]
    assert [(s.source, s.reason) for s in scan.skipped] == [("seq002", sources.TOO_FEW_FRAMES)]


def test_procedural_scenes_are_deterministic_and_distinct():
    a_image, a_labels = procedural.render_image(7, (80, 60))
    b_image, b_labels = procedural.render_image(7, (80, 60))
    c_image, _ = procedural.render_image(8, (80, 60))
    assert np.array_equal(a_image, b_image) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_image, c_image)
    assert 0.02 < a_labels.mean() < 0.6

    frames, labels = procedural.render_video(3, 6, (80, 60), num_objects=2)
    again, _ = procedural.render_video(3, 6, (80, 60), num_objects=2)
    assert frames.shape == (6, 60, 80, 3) and np.array_equal(frames, again)
    assert not np.array_equal(labels[0], labels[5])  # objects move


def test_fingerprint_changes_with_the_data(image_folder):
    before = scan_image_folders(str(image_folder), "images", "masks").fingerprint
    assert scan_image_folders(str(image_folder), "images", "masks").fingerprint == before
    (image_folder / "masks" / "00000.png").write_bytes(b"x" * 10)
    assert scan_image_folders(str(image_folder), "images", "masks").fingerprint != before
