"""The one reader of frames and label masks (datagen's sources, `vos segment` and the
evaluation all decode through here), and the writer of masks and overlays.

A frame is uint8 RGB [H, W, 3]. 16-bit images (PIL modes I;16, I;16B, I;16L, I) are scaled
from 0..65535 to 0..255 (PIL's own conversion would clip them to white).

A label mask is uint8 [H, W]: 0 = background, 1..K = objects. Void pixels (the unlabelled
boundary band that DAVIS and PASCAL VOC mark 255) are background, 0, in the label map: DAVIS
scores them as background and shards store labels 0..K. A mask image becomes labels by kind:

    palette ("P")   the palette index is the object id (DAVIS 2017, YouTube-VOS, COCO here,
                    what `write_mask` writes); index 255 is void. A frame showing only
                    object 3 stays object 3, so ids keep their meaning across a video.
    1-bit ("1")     set pixels are object 1.
    grey (L, LA)    - one non-zero value of 128 or more (0/255 of DAVIS 2016 and saliency
                      sets, 0/137, ...) is a binary mask: object 1;
                    - values below 128, with or without 255, are object ids (255 is void):
                      0/1/2/255 gives objects 1 and 2;
                    - else, when at least 95 % of the pixels are 0 or 255, an anti-aliased
                      binary mask: pixels of 128 or more are object 1 (an anti-aliased edge
                      always has levels past the middle grey, so it is never taken for ids);
                    - anything else (a photo, a soft saliency map) raises `PixelFormatError`.
    16-bit grey     65535 stands for 255 (0/65535 is binary, 65535 beside ids is void) and a
                    lone non-zero value above 255 is a binary mask's foreground; all other
                    values must fit 0..255, then the grey rules apply.
    RGB, RGBA       grey pixels (R = G = B): the grey rules; otherwise every colour must be a
                    DAVIS palette colour, which gives its index (its colour 255 is void).
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
    "VOID",
    "MaskError",
    "PixelFormatError",
    "davis_palette",
    "encode_mask",
    "frame_rgb",
    "frame_size",
    "list_frames",
    "mask_labels",
    "overlay",
    "read_frame",
    "read_mask",
    "write_mask",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VOID = 255  # the void value of palette and grey masks (the DAVIS palette's last colour)
GREY_ID_LIMIT = 128  # grey values below this are object ids
ANTIALIASED_SHARE = 0.95  # share of 0/255 pixels from which a grey mask is a soft-edged binary
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit grey (and 32-bit integer) images
WIDE_MAX = 65535


class MaskError(ValueError):
    """A frame or mask file that cannot be used; the message names the file and the problem."""


class PixelFormatError(MaskError):
    """Pixels that no rule reads (stray grey levels, an unknown colour, an unknown mode);
    `problem` is the message without the file's name."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


@cache
def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: uint8 [256, 3], index 0 black, 1 red, 2 green, ...

    `Image.putpalette(davis_palette().tobytes())` gives a mask image the DAVIS colours."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((label >> 0) & 1) << (7 - bit)
            green |= ((label >> 1) & 1) << (7 - bit)
            blue |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette[index] = (red, green, blue)
    palette.flags.writeable = False
    return palette


# -- opening files ------------------------------------------------------------------------


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise MaskError(f"{path}: {what} not found")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MaskError(f"{path}: cannot read {what}: {err}") from None
    return image


def _image(data: Image.Image | bytes, where: str, what: str) -> Image.Image:
    """A loaded PIL image from an image or the bytes of an image file."""
    if isinstance(data, Image.Image):
        return data
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MaskError(f"{where}: cannot read {what}: {err}") from None
    return image


def frame_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header alone (no pixels are decoded)."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: frame not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MaskError(f"{path}: cannot read frame: {err}") from None
    return height, width


# -- frames -------------------------------------------------------------------------------


def frame_rgb(data: Image.Image | bytes, where: str = "frame") -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image (or an image file's bytes); 16-bit grey is scaled
    0..65535 -> 0..255. The array may be read-only (no copy when the image is RGB already)."""
    image = _image(data, where, "frame")
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in WIDE_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, WIDE_MAX)
        grey = ((wide * 255 + WIDE_MAX // 2) // WIDE_MAX).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_frame(path: str | Path) -> np.ndarray:
    """An RGB frame as uint8 [H, W, 3] (a writable array)."""
    path = Path(path)
    rgb = frame_rgb(_open(path, "frame"), str(path))
    return rgb if rgb.flags.writeable else rgb.copy()


# -- masks --------------------------------------------------------------------------------


def mask_labels(data: Image.Image | bytes, where: str = "mask") -> np.ndarray:
    """Object labels uint8 [H, W] of a mask image (or a mask file's bytes), by the rules in
    the module docstring; `PixelFormatError` (naming `where`) when no rule fits."""
    image = _image(data, where, "mask")
    mode = image.mode
    if mode in ("P", "PA"):
        labels = np.array(image.getchannel(0) if mode == "PA" else image, dtype=np.uint8)
        labels[labels == VOID] = 0
        return labels
    if mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("L", "LA"):
        return _labels_from_grey(np.asarray(image.getchannel(0)), where)
    if mode in WIDE_MODES:
        return _labels_from_grey(_narrowed(np.asarray(image).astype(np.int64), where), where)
    if mode in ("RGB", "RGBA"):
        return _labels_from_colours(np.asarray(image.convert("RGB")), where)
    raise PixelFormatError(where, f"unsupported mask image mode {mode!r}")


def _labels_from_grey(values: np.ndarray, where: str) -> np.ndarray:
    counts = np.bincount(values.ravel(), minlength=256)
    levels = np.flatnonzero(counts[1:]) + 1  # the non-zero values present
    if len(levels) == 1 and levels[0] >= GREY_ID_LIMIT:
        return (values > 0).astype(np.uint8)  # binary: 0/255, 0/137
    if (levels[levels != VOID] < GREY_ID_LIMIT).all():
        return np.where(values == VOID, 0, values).astype(np.uint8)  # ids, 255 void
    if counts[0] + counts[255] >= ANTIALIASED_SHARE * values.size:
        return (values >= GREY_ID_LIMIT).astype(np.uint8)  # binary with soft edges
    raise PixelFormatError(
        where,
        f"{len(levels)} grey levels besides 0, neither object ids (1..{GREY_ID_LIMIT - 1}, "
        "255 void) nor a binary mask",
    )


def _narrowed(values: np.ndarray, where: str) -> np.ndarray:
    """16-bit grey values as 8-bit mask values (see the module docstring)."""
    levels = np.unique(values[values != 0])
    if len(levels) == 1 and levels[0] > VOID:
        return (values > 0).astype(np.uint8) * VOID
    values = np.where(values == WIDE_MAX, VOID, values)
    if values.min(initial=0) < 0 or values.max(initial=0) > VOID:
        raise PixelFormatError(
            where,
            f"16-bit mask values {values.min()}..{values.max()} do not fit object ids 0..255",
        )
    return values.astype(np.uint8)


def _labels_from_colours(rgb: np.ndarray, where: str) -> np.ndarray:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return _labels_from_grey(rgb[..., 0], where)
    palette = davis_palette().astype(np.int32)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    positions = np.searchsorted(palette_codes[order], codes).clip(0, 255)
    known = palette_codes[order][positions] == codes
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise PixelFormatError(
            where,
            f"colour {tuple(rgb[y, x].tolist())} at x={x}, y={y} is not in the DAVIS palette",
        )
    labels = order[positions].astype(np.uint8)
    labels[labels == VOID] = 0
    return labels


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask as uint8 [H, W] (0 = background, 1..K = objects) from any supported PNG."""
    path = Path(path)
    return mask_labels(_open(path, "mask"), str(path))


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
