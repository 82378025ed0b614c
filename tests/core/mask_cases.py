"""Mask files of every kind the decoder reads, as PNG bytes with the labels they must give;
shared by the decoder's tests (tests/core) and the sources' tests (tests/datagen)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from core.masks import davis_palette

HEIGHT, WIDTH = 100, 160  # big enough that a 400 px object leaves >= 95 % of pixels 0 or 255


def png(array: np.ndarray, palette: bool = False) -> bytes:
    """PNG bytes of `array` (uint8 grey or RGB, uint16 grey); `palette`: a DAVIS palette PNG."""
    image = Image.fromarray(array)
    if palette:
        image.putpalette(davis_palette().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _objects() -> np.ndarray:
    """Object 1 (400 px), object 2 (200 px) and a 600 px void band (255)."""
    values = np.zeros((HEIGHT, WIDTH), np.uint8)
    values[30:50, 10:30] = 1
    values[60:70, 100:120] = 2
    values[:4, 10:160] = 255
    return values


def _labels(values: np.ndarray) -> np.ndarray:
    return np.where(values == 255, 0, values).astype(np.uint8)


def _cases() -> dict[str, tuple[bytes, np.ndarray]]:
    objects = _objects()
    one = (objects == 1).astype(np.uint8)
    soft = np.zeros((HEIGHT, WIDTH), np.uint8)
    soft[30:50, 30:80] = 255
    soft[29, 30:80], soft[50, 30:80], soft[30:50, 29] = 60, 140, 200  # anti-aliased edges
    soft_labels = (soft >= 128).astype(np.uint8)
    only_three = np.where(objects == 2, 3, 0).astype(np.uint8)
    coloured = objects.copy()  # RGB in DAVIS colours: 255 is the palette's void colour
    wide = objects.astype(np.uint16)
    wide[wide == 255] = 65535
    return {
        "0/255 binary": (png(one * 255), one),
        "0/137 grey: one object, not 137": (png(one * 137), one),
        "grey ids 1, 2 with a 255 void band": (png(objects), _labels(objects)),
        "grey: a lone small id keeps its id": (png(only_three), only_three),
        "anti-aliased 0/255": (png(soft), soft_labels),
        "palette ids, 255 void": (png(objects, palette=True), _labels(objects)),
        "palette: only object 3 stays 3": (png(only_three, palette=True), only_three),
        "RGB in DAVIS colours": (png(davis_palette()[coloured]), _labels(objects)),
        "RGB black and white": (png(np.repeat(one[..., None] * 255, 3, axis=2)), one),
        "16-bit ids, 65535 void": (png(wide), _labels(objects)),
        "16-bit 0/65535 binary": (png(one.astype(np.uint16) * 65535), one),
    }


MASK_CASES = _cases()


def _bad() -> dict[str, tuple[bytes, str]]:
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH)).astype(np.uint8)
    odd_colour = davis_palette()[_objects()].copy()
    odd_colour[5, 7] = (1, 2, 3)
    wide = np.zeros((HEIGHT, WIDTH), np.uint16)
    wide[:10, :10], wide[20:30, :10] = 1000, 2000
    return {
        "noise": (png(noise), r"grey levels besides 0, neither object ids"),
        "unknown colour": (png(odd_colour), r"colour \(1, 2, 3\) at x=7, y=5 is not in the DAVIS"),
        "16-bit values beyond 255": (png(wide), r"16-bit mask values 0\.\.2000 do not fit"),
    }


BAD_MASKS = _bad()
