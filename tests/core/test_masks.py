"""The one mask and frame decoder: every mask kind gives the documented labels, bad masks one
line naming the file, 16-bit frames their real brightness."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.masks import PixelFormatError, frame_rgb, mask_labels, read_frame, read_mask
from tests.core.mask_cases import BAD_MASKS, MASK_CASES


@pytest.mark.parametrize("case", MASK_CASES)
def test_every_mask_kind_gives_its_labels(case, tmp_path):
    data, expected = MASK_CASES[case]
    labels = mask_labels(data, "m.png")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)
    (tmp_path / "m.png").write_bytes(data)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)  # same from a file


def test_a_void_band_is_not_taken_for_the_object():
    labels = mask_labels(MASK_CASES["grey ids 1, 2 with a 255 void band"][0])
    assert (labels == 1).sum() == 400 and (labels == 2).sum() == 200
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize("case", BAD_MASKS)
def test_bad_masks_fail_in_one_line_naming_the_file(case):
    data, message = BAD_MASKS[case]
    with pytest.raises(PixelFormatError, match=rf"^bad\.png: .*{message}") as error:
        mask_labels(data, "bad.png")
    assert "\n" not in str(error.value) and not error.value.problem.startswith("bad.png")


def test_a_16_bit_grey_frame_keeps_its_brightness(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)  # mean 32767.5
    Image.fromarray(ramp).save(tmp_path / "frame.png")
    assert Image.open(tmp_path / "frame.png").mode == "I;16"

    rgb = read_frame(tmp_path / "frame.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    assert abs(rgb.mean() - 127.5) < 0.5  # PIL's own conversion gives ~252 (clipped to white)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    np.testing.assert_array_equal(frame_rgb(buffer.getvalue()), rgb)
