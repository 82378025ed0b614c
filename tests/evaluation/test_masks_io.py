"""Mask files: 0/255, grayscale ids and palette PNGs read the same; written masks read back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.masks import (
    MaskError,
    davis_palette,
    list_frames,
    overlay,
    read_frame,
    read_mask,
    write_mask,
)


def labels_example() -> np.ndarray:
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[2:6, 3:9] = 1
    labels[7:11, 10:15] = 2
    return labels


def test_palette_mask_round_trip(tmp_path):
    labels = labels_example()
    write_mask(tmp_path / "a.png", labels)
    image = Image.open(tmp_path / "a.png")
    assert image.mode == "P"
    assert image.getpalette()[3:9] == [128, 0, 0, 0, 128, 0]  # DAVIS red, green
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), labels)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_binary_0_255_mask_is_object_1(tmp_path):
    Image.fromarray((labels_example() == 1).astype(np.uint8) * 255).save(tmp_path / "b.png")
    np.testing.assert_array_equal(
        read_mask(tmp_path / "b.png"), (labels_example() == 1).astype(np.uint8)
    )


def test_grayscale_ids_with_void(tmp_path):
    values = labels_example()
    values[0, :] = 255  # void pixels next to real ids: background, as DAVIS scores them
    Image.fromarray(values).save(tmp_path / "c.png")
    expected = labels_example()
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), expected)


def test_rgb_mask_in_davis_colours(tmp_path):
    Image.fromarray(davis_palette()[labels_example()]).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "d.png"), labels_example())
    odd = davis_palette()[labels_example()].copy()
    odd[0, 0] = (1, 2, 3)
    Image.fromarray(odd).save(tmp_path / "e.png")
    with pytest.raises(
        MaskError, match=r"e.png: colour \(1, 2, 3\) at x=0, y=0 is not in the DAVIS palette"
    ):
        read_mask(tmp_path / "e.png")


def test_bad_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="broken.png: cannot read mask"):
        read_mask(tmp_path / "broken.png")
    with pytest.raises(MaskError, match="missing.jpg: frame not found"):
        read_frame(tmp_path / "missing.jpg")
    with pytest.raises(MaskError, match="no frames"):
        list_frames(tmp_path / "..")  # a folder with no images
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskError, match="empty: no frames"):
        list_frames(tmp_path / "empty")


def test_overlay_tints_objects_only():
    frame = np.full((12, 16, 3), 100, dtype=np.uint8)
    picture = overlay(frame, labels_example())
    assert picture.shape == frame.shape and picture.dtype == np.uint8
    assert (picture[0, 0] == 100).all()  # background away from any edge is untouched
    assert picture[3, 5, 0] > 100 and picture[3, 5, 1] < 100  # inside object 1: towards red
