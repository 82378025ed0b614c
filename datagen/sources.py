"""Where clips come from: image + mask folders, DAVIS and YouTube-VOS videos, procedural scenes.

A *scan* lists a dataset (through fsspec, so a local folder or `s3://...`) and returns the
usable sources, the files it had to skip (with a reason each) and a fingerprint of what it
saw. Loading a source decodes its pixels and checks them; a bad file raises `BadInput`,
which the shard builder counts and skips, so bad input never stops a job.

Images and masks are decoded by `core.masks`, the one decoder every part shares: 16-bit
images are scaled to 8 bits, masks become labels (0 = background, 1..N = objects, void 255
-> 0) by the rules in its docstring; a mask no rule reads is skipped as "unexpected mask
values" (e.g. a photo or a soft saliency map).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
import re
from dataclasses import dataclass, field

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError

from core import masks
from core.storage import filesystem, read_bytes
from datagen import procedural

__all__ = [
    "BAD_MASK_VALUES",
    "CORRUPT",
    "EMPTY_MASK",
    "NOT_IMAGE",
    "SIZE_MISMATCH",
    "TOO_FEW_FRAMES",
    "UNMATCHED_IMAGE",
    "UNMATCHED_MASK",
    "BadInput",
    "ImageSource",
    "ProceduralImageSource",
    "ProceduralVideoSource",
    "Scan",
    "Skip",
    "VideoFrame",
    "VideoSource",
    "decode_image",
    "decode_mask",
    "procedural_image_sources",
    "procedural_video_sources",
    "scan_davis",
    "scan_image_folders",
    "scan_youtube",
]

# Reasons a source is skipped (the keys of the manifest's "skipped" counts).
CORRUPT = "corrupt image"
NOT_IMAGE = "non-image file"
SIZE_MISMATCH = "mask size mismatch"
EMPTY_MASK = "empty mask"
BAD_MASK_VALUES = "unexpected mask values"
UNMATCHED_IMAGE = "image without mask"
UNMATCHED_MASK = "mask without image"
TOO_FEW_FRAMES = "too few annotated frames"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_VIDEO_FRAMES = 3


class BadInput(Exception):
    """A source that cannot be used; `reason` is one of the module's reason strings."""

    def __init__(self, reason: str, source: str, detail: str = ""):
        self.reason, self.source, self.detail = reason, source, detail
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Skip:
    source: str
    reason: str
    detail: str = ""


@dataclass
class Scan:
    """The result of listing a dataset."""

    sources: list = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    fingerprint: str = ""


# -- decoding ---------------------------------------------------------------------------------


def _open(data: bytes, source: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadInput(NOT_IMAGE, source, "not a readable image format") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a corrupt image
        raise BadInput(CORRUPT, source, type(err).__name__) from None
    return image


def _load(image: Image.Image, source: str) -> None:
    try:
        image.load()
    except Exception as err:  # noqa: BLE001 - truncated data, bad huffman tables, ...
        raise BadInput(CORRUPT, source, " ".join(str(err).split()) or type(err).__name__) from None


def _rgb(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] (no conversion copy when the image is RGB already)."""
    return masks.frame_rgb(image)


def decode_image(data: bytes, source: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    image = _open(data, source)
    _load(image, source)
    return _rgb(image)


def decode_mask(data: bytes, source: str) -> np.ndarray:
    """Object labels uint8 [H, W] by the rules of `core.masks`."""
    mask = _open(data, source)
    _load(mask, source)
    return _labels(mask, source)


def _labels(mask: Image.Image, source: str) -> np.ndarray:
    try:
        return masks.mask_labels(mask, source)
    except masks.PixelFormatError as err:
        raise BadInput(BAD_MASK_VALUES, source, err.problem) from None


def load_pair(image_bytes: bytes, mask_bytes: bytes, image_id: str, mask_id: str):
    """Decode and check an image and its mask: (image [H, W, 3], labels [H, W])."""
    image = _open(image_bytes, image_id)
    mask = _open(mask_bytes, mask_id)
    if image.size != mask.size:
        raise BadInput(
            SIZE_MISMATCH,
            image_id,
            f"image {image.size[0]}x{image.size[1]}, mask {mask.size[0]}x{mask.size[1]}",
        )
    _load(image, image_id)
    _load(mask, mask_id)
    labels = _labels(mask, mask_id)
    if not labels.any():
        raise BadInput(EMPTY_MASK, mask_id)
    return _rgb(image), labels


# -- sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """An image file and its mask file."""

    source_id: str
    image_url: str
    mask_url: str
    mask_id: str = ""

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return load_pair(
            _read(self.image_url, self.source_id),
            _read(self.mask_url, self.mask_id or self.mask_url),
            self.source_id,
            self.mask_id or self.mask_url,
        )


@dataclass(frozen=True)
class ProceduralImageSource:
    """A procedural scene, rendered on demand (no files)."""

    source_id: str
    seed: int
    width: int
    height: int
    num_objects: int = 1
    style: str = "classic"  # a name in `procedural.STYLES`

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        size = (self.width, self.height)
        return procedural.render_image(self.seed, size, self.num_objects, self.style)


@dataclass(frozen=True)
class VideoFrame:
    index: int
    image_url: str
    mask_url: str


@dataclass(frozen=True)
class VideoSource:
    """A video sequence; `frames` are its annotated frames in temporal order."""

    source_id: str
    frames: tuple[VideoFrame, ...]

    def frame_indices(self) -> list[int]:
        return [frame.index for frame in self.frames]

    def load_frame(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        frame = self.frames[position]
        name = f"{self.source_id}/{posixpath.basename(frame.image_url)}"
        mask_name = f"{self.source_id}/{posixpath.basename(frame.mask_url)}"
        image_bytes, mask_bytes = _read(frame.image_url, name), _read(frame.mask_url, mask_name)
        image = _open(image_bytes, name)
        mask = _open(mask_bytes, mask_name)
        if image.size != mask.size:
            raise BadInput(SIZE_MISMATCH, name, f"image {image.size}, mask {mask.size}")
        _load(image, name)
        _load(mask, mask_name)
        return _rgb(image), _labels(mask, mask_name)


@dataclass(frozen=True)
class ProceduralVideoSource:
    """A procedural video, rendered on demand; every frame is annotated."""

    source_id: str
    seed: int
    num_frames: int
    width: int
    height: int
    num_objects: int = 2
    late_object: bool = False
    style: str = "classic"  # a name in `procedural.STYLES`

    def frame_indices(self) -> list[int]:
        return list(range(self.num_frames))

    def load_frame(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        frames, labels = _render_video(
            self.seed,
            self.num_frames,
            self.width,
            self.height,
            self.num_objects,
            self.late_object,
            self.style,
        )
        return frames[position], labels[position]


@functools.lru_cache(maxsize=4)
def _render_video(seed, num_frames, width, height, num_objects, late_object, style):
    size = (width, height)
    return procedural.render_video(seed, num_frames, size, num_objects, late_object, style)


def _read(url: str, source: str) -> bytes:
    try:
        return read_bytes(url)
    except FileNotFoundError:
        raise BadInput(CORRUPT, source, "file disappeared") from None
    except OSError as err:
        raise BadInput(CORRUPT, source, f"unreadable: {err.strerror or err}") from None


# -- scanning ---------------------------------------------------------------------------------


def _list_files(root_url: str, folder: str) -> dict[str, tuple[str, int]]:
    """Files under root/folder (recursively): relative path -> (url, size). Missing folder: {}."""
    fs, root = filesystem(root_url)
    base = posixpath.join(root, folder) if folder else root
    if not fs.isdir(base):
        return {}
    found = fs.find(base, detail=True)
    files = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        relative = posixpath.relpath(path, root)
        url = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
        files[relative] = (url, int(info.get("size") or 0))
    return files


def _fingerprint(kind: str, files: dict[str, tuple[str, int]]) -> str:
    """sha256 over the kind and every file's relative path and size."""
    digest = hashlib.sha256(kind.encode())
    for relative in sorted(files):
        digest.update(f"\n{relative}\t{files[relative][1]}".encode())
    return digest.hexdigest()


def _is_image_name(name: str, suffixes) -> bool:
    return posixpath.splitext(name)[1].lower() in suffixes


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def scan_image_folders(
    root: str,
    image_dir: str = "",
    mask_dir: str | None = None,
    image_suffixes=IMAGE_SUFFIXES,
    mask_pattern: str = "{stem}.png",
) -> Scan:
    """Pair images with masks by stem.

    `mask_dir=None` means masks sit beside the images (MSRA10K: `x.jpg` + `x.png`);
    otherwise masks are in their own folder (ECSSD, HKU-IS, DUTS). `mask_pattern` names the
    mask of an image from its stem (e.g. "{stem}.png", "{stem}_mask.png"); sub-folders are
    kept (`images/a/x.jpg` pairs with `masks/a/x.png`). Images without a mask and masks
    without an image are reported as skipped; hidden files are ignored.
    """
    suffixes = tuple(s.lower() for s in image_suffixes)
    same_folder = mask_dir is None or posixpath.normpath(mask_dir) == posixpath.normpath(image_dir)
    image_files = _list_files(root, image_dir)
    mask_files = image_files if same_folder else _list_files(root, mask_dir)
    image_base = image_dir.strip("/")
    mask_base = (image_dir if same_folder else mask_dir).strip("/")
    image_files = {k: v for k, v in image_files.items() if not _is_hidden(k)}
    mask_files = {k: v for k, v in mask_files.items() if not _is_hidden(k)}

    def mask_name(relative_image: str) -> str:
        inner = posixpath.relpath(relative_image, image_base) if image_base else relative_image
        folder, name = posixpath.split(inner)
        stem = posixpath.splitext(name)[0]
        return posixpath.normpath(posixpath.join(mask_base, folder, mask_pattern.format(stem=stem)))

    candidates = [name for name in sorted(image_files) if _is_image_name(name, suffixes)]
    used_masks: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for name in candidates:
        mask = mask_name(name)
        if mask != name and mask in mask_files:
            pairs.append((name, mask))
            used_masks.add(mask)

    scan = Scan()
    paired_images = {image for image, _ in pairs}
    for image, mask in pairs:
        if image in used_masks:  # same folder: x.png is the mask of x.jpg, not an image
            continue
        scan.sources.append(
            ImageSource(
                source_id=image,
                image_url=image_files[image][0],
                mask_url=mask_files[mask][0],
                mask_id=mask,
            )
        )
    for name in sorted(image_files):
        if name in paired_images or name in used_masks:
            continue
        if not _is_image_name(name, suffixes):
            scan.skipped.append(Skip(name, NOT_IMAGE, "file name is not an image"))
        elif same_folder and name.endswith(mask_pattern.format(stem="")):
            scan.skipped.append(Skip(name, UNMATCHED_MASK))
        else:
            scan.skipped.append(Skip(name, UNMATCHED_IMAGE, f"no {mask_name(name)}"))
    if not same_folder:
        for name in sorted(mask_files):
            if name in used_masks:
                continue
            reason = UNMATCHED_MASK if _is_image_name(name, suffixes) else NOT_IMAGE
            scan.skipped.append(Skip(name, reason))
    all_files = {**image_files, **mask_files}
    scan.fingerprint = _fingerprint("images", all_files)
    return scan


_DIGITS = re.compile(r"(\d+)$")


def _scan_videos(root: str, image_dir: str, mask_dir: str, kind: str, sequences) -> Scan:
    image_files = _list_files(root, image_dir)
    mask_files = _list_files(root, mask_dir)
    wanted = set(sequences) if sequences else None
    by_sequence: dict[str, dict[str, dict[str, str]]] = {}
    scan = Scan()
    for files, role in ((image_files, "image"), (mask_files, "mask")):
        base = image_dir if role == "image" else mask_dir
        for relative, (url, _size) in sorted(files.items()):
            if _is_hidden(relative):
                continue
            inner = posixpath.relpath(relative, base)
            if "/" not in inner:
                continue  # a loose file beside the sequence folders (e.g. a README)
            sequence, name = inner.split("/", 1)
            if wanted is not None and sequence not in wanted:
                continue
            if not _is_image_name(name, IMAGE_SUFFIXES):
                scan.skipped.append(Skip(relative, NOT_IMAGE, "file name is not an image"))
                continue
            stem = posixpath.splitext(name)[0]
            by_sequence.setdefault(sequence, {}).setdefault(stem, {})[role] = url
    for sequence in sorted(by_sequence):
        stems = by_sequence[sequence]
        frames = []
        for position, stem in enumerate(sorted(stems)):
            entry = stems[stem]
            if "mask" in entry and "image" not in entry:
                scan.skipped.append(Skip(f"{sequence}/{stem}", UNMATCHED_MASK))
                continue
            if "mask" not in entry:
                continue  # frames without annotation are normal (YouTube-VOS)
            match = _DIGITS.search(stem)
            index = int(match.group(1)) if match else position
            frames.append(VideoFrame(index, entry["image"], entry["mask"]))
        if len(frames) < MIN_VIDEO_FRAMES:
            scan.skipped.append(Skip(sequence, TOO_FEW_FRAMES, f"{len(frames)} annotated"))
            continue
        scan.sources.append(VideoSource(sequence, tuple(sorted(frames, key=lambda f: f.index))))
    scan.fingerprint = _fingerprint(kind, {**image_files, **mask_files})
    return scan


def scan_davis(root: str, resolution: str = "480p", sequences=None) -> Scan:
    """`root/JPEGImages/<resolution>/<seq>/*.jpg` with `root/Annotations/<resolution>/<seq>/*.png`."""
    return _scan_videos(
        root,
        f"JPEGImages/{resolution}",
        f"Annotations/{resolution}",
        f"davis:{resolution}",
        sequences,
    )


def scan_youtube(root: str, sequences=None) -> Scan:
    """`root/JPEGImages/<video>/*.jpg` with `root/Annotations/<video>/*.png` on some frames."""
    return _scan_videos(root, "JPEGImages", "Annotations", "youtube", sequences)


def _procedural_fingerprint(kind: str, style: str, **params) -> str:
    """sha256 of the parameters; the classic style is left out, so that classic sets keep the
    fingerprint they had before there were styles."""
    procedural.scene_style(style)  # an unknown name fails here, not inside a shard task
    if style != "classic":
        params["style"] = style
    return hashlib.sha256(json.dumps({"kind": kind, **params}, sort_keys=True).encode()).hexdigest()


def procedural_image_sources(
    count: int, seed: int, width: int, height: int, num_objects: int = 1, style: str = "classic"
) -> Scan:
    """`count` scenes of a `procedural.STYLES` style; scene i has seed `seed * 1_000_003 + i`."""
    fingerprint = _procedural_fingerprint(
        "procedural-images",
        style,
        count=count,
        seed=seed,
        width=width,
        height=height,
        num_objects=num_objects,
    )
    sources = [
        ProceduralImageSource(
            f"procedural/{index:06d}", seed * 1_000_003 + index, width, height, num_objects, style
        )
        for index in range(count)
    ]
    return Scan(sources=sources, fingerprint=fingerprint)


def procedural_video_sources(
    count: int,
    seed: int,
    num_frames: int,
    width: int,
    height: int,
    num_objects: int = 2,
    late_object: bool = False,
    style: str = "classic",
) -> Scan:
    """`count` videos of a `procedural.STYLES` style; video i has seed `seed * 1_000_003 + i`."""
    fingerprint = _procedural_fingerprint(
        "procedural-videos",
        style,
        count=count,
        seed=seed,
        num_frames=num_frames,
        width=width,
        height=height,
        num_objects=num_objects,
        late_object=late_object,
    )
    sources = [
        ProceduralVideoSource(
            f"procedural/seq{index:04d}",
            seed * 1_000_003 + index,
            num_frames,
            width,
            height,
            num_objects,
            late_object,
            style,
        )
        for index in range(count)
    ]
    return Scan(sources=sources, fingerprint=fingerprint)
