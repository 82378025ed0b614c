"""Reading and writing frames and label masks, and drawing overlays.

A label mask is a uint8 array [H, W]: 0 = background, 1..K = objects. On disk it is a PNG:

- a palette PNG (DAVIS 2017, YouTube-VOS, what `write_mask` writes): the palette index is
  the object id;
- an 8-bit grayscale PNG holding only 0 and 255 (DAVIS 2016): 255 is object 1;
- an 8-bit grayscale PNG of object ids 0..K; 255 next to other ids marks void pixels, which
  DAVIS scores as background;
- an RGB PNG painted with the DAVIS palette (or black and white).
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core import storage

__all__ = [
    "FRAME_SUFFIXES",
    "MaskError",
    "davis_palette",
    "encode_mask",
    "list_frames",
    "overlay",
    "read_frame",
    "read_mask",
    "write_mask",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VOID = 255


class MaskError(ValueError):
    """A frame or mask file that cannot be used; the message names the file and the problem."""


@cache
def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: uint8 [256, 3], index 0 black, 1 red, 2 green, ..."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((label >> 0) & 1) << (7 - bit)
            green |= ((label >> 1) & 1) << (7 - bit)
            blue |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette[index] = (red, green, blue)
    return palette


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise MaskError(f"{path}: {what} not found")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MaskError(f"{path}: cannot read {what}: {err}") from None
    return image


def read_frame(path: str | Path) -> np.ndarray:
    """An RGB frame as uint8 [H, W, 3] (a writable array)."""
    return np.array(_open(Path(path), "frame").convert("RGB"))


def _labels_from_values(values: np.ndarray, path: Path) -> np.ndarray:
    present = np.unique(values)
    if present.max(initial=0) > 255 or present.min(initial=0) < 0:
        raise MaskError(
            f"{path}: mask values {present.min()}..{present.max()} do not fit object ids 0..255"
        )
    labels = values.astype(np.uint8)
    if set(present.tolist()) <= {0, VOID}:
        return (labels == VOID).astype(np.uint8)
    labels[labels == VOID] = 0
    return labels


def _labels_from_colours(rgb: np.ndarray, path: Path) -> np.ndarray:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return _labels_from_values(rgb[..., 0], path)
    palette = davis_palette().astype(np.int32)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    positions = np.searchsorted(palette_codes[order], codes).clip(0, 255)
    known = palette_codes[order][positions] == codes
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise MaskError(
            f"{path}: colour {tuple(rgb[y, x].tolist())} at x={x}, y={y} is not in the DAVIS palette"
        )
    return order[positions].astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask as uint8 [H, W] (0 = background, 1..K = objects) from any supported PNG."""
    path = Path(path)
    image = _open(path, "mask")
    if image.mode == "P":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L"):
        return _labels_from_values(np.asarray(image).astype(np.int64), path)
    if image.mode in ("RGB", "RGBA"):
        return _labels_from_colours(np.asarray(image.convert("RGB")), path)
    if image.mode == "LA":
        return _labels_from_values(np.asarray(image.getchannel("L")).astype(np.int64), path)
    raise MaskError(f"{path}: unsupported mask image mode {image.mode!r}")


def encode_mask(labels: np.ndarray, where: str = "mask") -> bytes:
    """A label mask as the bytes of a palette PNG (DAVIS colours)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise MaskError(
            f"{where}: a mask must be [H, W] with ids 0..255, got {labels.shape} {labels.dtype}"
        )
    image = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette makes it "P"
    image.putpalette(davis_palette().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write a label mask as a palette PNG (DAVIS colours), atomically: never half a file."""
    storage.write_bytes_atomic(str(path), encode_mask(labels, where=str(path)))


def list_frames(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, in name order; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"{folder}: frame folder not found")
    frames = sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in FRAME_SUFFIXES and path.is_file()
    )
    if not frames:
        raise MaskError(f"{folder}: no frames (expected {', '.join(FRAME_SUFFIXES)} files)")
    return frames


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame with each object tinted in its DAVIS colour and outlined: uint8 [H, W, 3]."""
    if frame.shape[:2] != labels.shape:
        raise MaskError(f"overlay: frame is {frame.shape[:2]} but mask is {labels.shape}")
    colours = davis_palette()[labels].astype(np.float32)
    objects = labels > 0
    blended = frame.astype(np.float32)
    blended[objects] = (1 - alpha) * blended[objects] + alpha * colours[objects]
    edges = np.zeros_like(objects)
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    blended[edges] = colours[edges]
    return blended.clip(0, 255).astype(np.uint8)
