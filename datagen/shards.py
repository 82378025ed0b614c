"""One WebDataset shard: writing it (clips -> JPEG/PNG/JSON -> tar bytes -> storage) and
reading it back checked against its manifest entry.

A sample is `f0.jpg ... f<T-1>.jpg m0.png ... m<T-1>.png json` under the key
`<shard>_<clip>` (e.g. `000012_000034`): an image clip has T = 3 frames at the clip size; a
video *window* has the T consecutive annotated frames of a stretch of video, shorter side a
little above the clip size, and its JSON lists their raw frame indices (see
`datagen.synthesis.make_video_window`). The tar is assembled in memory and written with
one atomic write, so a shard is visible only when complete. Tars are byte-identical for the
same clips: fixed member order, mtime 0, fixed owner, deterministic JPEG/PNG encoders.

Next to the shards, `_shards/shard-000012.json` records what a finished shard holds (sample
count, size, sha256, skipped inputs) and the config hash it was made with. A rerun keeps a
shard only when that record exists, has the same config hash, and the tar's bytes still
hash to the recorded sha256; anything else (missing, half-written, damaged, made with another
config) is made again. The manifest is assembled from these records.

**Reading** (`read_shard`): the size is checked before the shard is opened, and the bytes are
hashed as the tar is streamed (one read, no second pass); a shard that is missing, has
another size or sha256 than its manifest entry, another sample count, a damaged tar header or
a sample without its JSON or a frame's mask raises `ShardError`, one line naming the shard.
The hash is known only at the end of the shard: by then its samples have been yielded.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from webdataset import TarWriter

from core.storage import exists, filesystem, join, read_bytes, write_bytes_atomic
from datagen.manifest import ManifestError
from datagen.plan import ClipPlan
from datagen.sources import BadInput
from datagen.synthesis import (
    NO_VALID_CROP,
    Clip,
    ClipSettings,
    PreparedFrames,
    SynthesisFailed,
    VideoWindow,
    add_background_regions,
    make_video_window,
    prepare_image,
    synthesize_image_clip,
)

__all__ = [
    "RECORDS_DIR",
    "ShardError",
    "ShardResult",
    "ShardSpec",
    "build_shard",
    "encode_clip",
    "frame_count",
    "read_shard",
    "shard_name",
    "tar_bytes",
]

RECORDS_DIR = "_shards"
READ_SIZE = 1 << 20  # bytes per read from storage (and per hash update) of a streamed shard
PNG_COMPRESS_LEVEL = 1  # masks are flat; level 1 is as small as 6 here and several times faster


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to make shard `index` (no Ray, no config objects)."""

    index: int
    kind: str  # "image" or "video"
    clips: tuple[ClipPlan, ...]  # video: sources are VideoWindows (a bare video: all its frames)
    settings: ClipSettings
    config_hash: str
    jpeg_quality: int = 90

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass
class ShardResult:
    record: dict  # what the manifest lists, plus the skipped inputs
    status: str  # "kept" (verified and reused), "written" (new) or "replaced" (was damaged/stale)
    seconds: float = 0.0
    clips_made: int = 0


def encode_clip(clip: Clip, key: str, jpeg_quality: int = 90) -> dict:
    """One WebDataset sample (bytes per member) for a clip."""
    sample: dict = {"__key__": key}
    for t in range(clip.frames.shape[0]):
        planes = [Image.fromarray(np.ascontiguousarray(clip.frames[t, c])) for c in range(3)]
        sample[f"f{t}.jpg"] = _encode(Image.merge("RGB", planes), "JPEG", quality=jpeg_quality)
        sample[f"m{t}.png"] = _encode(
            Image.fromarray(clip.labels[t], "L"), "PNG", compress_level=PNG_COMPRESS_LEVEL
        )
    sample["json"] = json.dumps(clip.record, sort_keys=True, separators=(",", ":")).encode()
    return sample


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def tar_bytes(samples: list[dict]) -> bytes:
    """A reproducible tar of WebDataset samples."""
    buffer = io.BytesIO()
    with TarWriter(buffer, user="vos", group="vos", mode=0o644, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return buffer.getvalue()


def _record_url(output_url: str, index: int) -> str:
    return join(output_url, RECORDS_DIR, shard_name(index).replace(".tar", ".json"))


def _verified_record(spec: ShardSpec, output_url: str) -> tuple[dict | None, bool]:
    """(record, existed): the stored record if the shard on storage matches it exactly."""
    tar_url, record_url = join(output_url, spec.name), _record_url(output_url, spec.index)
    if not exists(tar_url):
        return None, exists(record_url)
    if not exists(record_url):
        return None, True
    try:
        record = json.loads(read_bytes(record_url))
        data = read_bytes(tar_url)
    except (ValueError, OSError):
        return None, True
    same = (
        record.get("config_hash") == spec.config_hash
        and record.get("bytes") == len(data)
        and record.get("sha256") == hashlib.sha256(data).hexdigest()
    )
    return (record if same else None), True


def _stable_seed(source_id: str) -> int:
    """A seed of a source's own (its background regions are the same in every shard)."""
    return int.from_bytes(hashlib.sha256(source_id.encode()).digest()[:8], "little")


class _Sources:
    """Decoded sources of one shard task: each image decoded once for all its clips, and the
    last video frames kept (consecutive clips of a video share frames)."""

    def __init__(self, settings: ClipSettings, max_frames: int = 64):
        self.settings = settings
        self.max_frames = max_frames
        self.last_image: tuple[str, PreparedFrames | BadInput] | None = None
        self.frames: dict[tuple[str, int], tuple] = {}

    def image(self, source) -> PreparedFrames:
        if self.last_image is None or self.last_image[0] != source.source_id:
            try:
                image, labels = source.load()
                labels = add_background_regions(
                    labels, self.settings.background_regions, _stable_seed(source.source_id)
                )
                value: PreparedFrames | BadInput = prepare_image(
                    image, labels, self.settings.size, self.settings.fit_source
                )
            except BadInput as bad:
                value = bad
            self.last_image = (source.source_id, value)
        value = self.last_image[1]
        if isinstance(value, BadInput):
            raise value
        return value

    def video(self, source):
        return _CachedVideo(source, self)


class _CachedVideo:
    def __init__(self, source, cache: _Sources):
        self.source, self.cache = source, cache
        self.source_id = source.source_id

    def frame_indices(self) -> list[int]:
        return self.source.frame_indices()

    def load_frame(self, position: int):
        key = (self.source_id, position)
        frames = self.cache.frames
        if key not in frames:
            if len(frames) >= self.cache.max_frames:
                frames.pop(next(iter(frames)))
            try:
                frames[key] = self.source.load_frame(position)
            except BadInput as bad:
                frames[key] = bad
        value = frames[key]
        if isinstance(value, BadInput):
            raise value
        return value


def _make_clip(spec: ShardSpec, plan: ClipPlan, sources: _Sources) -> Clip:
    if spec.kind == "video":
        window = plan.source
        if not isinstance(window, VideoWindow):  # a whole video as one window
            window = VideoWindow(window, tuple(range(len(window.frame_indices()))))
        return make_video_window(
            VideoWindow(sources.video(window.video), window.positions), spec.settings
        )
    prepared = sources.image(plan.source)
    return synthesize_image_clip(prepared, spec.settings, plan.seed, plan.source.source_id)


def build_shard(spec: ShardSpec, output_url: str) -> ShardResult:
    """Make shard `spec.index` under `output_url`, unless an identical one is already there.

    Bad inputs are skipped and listed in the record; they never stop the shard.
    """
    started = time.perf_counter()
    record, existed = _verified_record(spec, output_url)
    if record is not None:
        return ShardResult(record, "kept", time.perf_counter() - started)

    sources = _Sources(spec.settings)
    samples, skipped = [], set()
    for position, plan in enumerate(spec.clips):
        try:
            clip = _make_clip(spec, plan, sources)
        except BadInput as bad:
            skipped.add((bad.source, bad.reason))
            continue
        except SynthesisFailed as failed:
            reason = str(failed) if spec.kind == "video" else NO_VALID_CROP
            skipped.add((plan.source.source_id, reason))
            continue
        samples.append(encode_clip(clip, f"{spec.index:06d}_{position:06d}", spec.jpeg_quality))

    data = tar_bytes(samples)
    record = {
        "name": spec.name,
        "index": spec.index,
        "samples": len(samples),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "config_hash": spec.config_hash,
        "skipped": sorted([list(pair) for pair in skipped]),
    }
    write_bytes_atomic(join(output_url, spec.name), data)
    write_bytes_atomic(
        _record_url(output_url, spec.index), json.dumps(record, sort_keys=True).encode()
    )
    return ShardResult(
        record, "replaced" if existed else "written", time.perf_counter() - started, len(samples)
    )


# -- reading ------------------------------------------------------------------------------------


class ShardError(ManifestError):
    """A shard that does not match its manifest entry or cannot be read; one line naming it.

    A DataLoader worker's error reaches the training process re-raised with the worker's
    traceback as its message; only the last line (this error's own) is kept.
    """

    def __init__(self, message: str):
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        super().__init__(re.sub(r"^(?:[\w.]+\.)?ShardError: ", "", last))


class _HashingReader(io.RawIOBase):
    """A read-only raw stream that hashes and counts the bytes read through it."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self.digest, self.bytes = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        self.bytes += len(data)
        return len(data)


_FRAME = re.compile(r"^f(\d+)\.jpg$")


def frame_count(sample: dict) -> int:
    """T of a sample's frames `f0.jpg ... f<T-1>.jpg`."""
    return sum(1 for name in sample if _FRAME.match(name))


def _check_members(sample: dict, url: str) -> None:
    count = frame_count(sample)
    expected = ["json"] + [f"f{t}.jpg" for t in range(count)] + [f"m{t}.png" for t in range(count)]
    missing = [name for name in expected if name not in sample]
    if count < 3 or missing:
        what = ", ".join(missing) if missing else f"{count} frames"
        raise ShardError(
            f"shard {url}: sample {sample.get('__key__')!r} lacks {what}; the shard is damaged"
        )


def read_shard(
    url: str, samples: int, size: int, sha256: str, verify: bool = True
) -> Iterator[dict]:
    """The samples of one shard (raw bytes per member), checked against its manifest entry.

    Raises `ShardError` (one line naming the shard) before the first sample when the shard is
    missing or has another size; on a damaged tar header or an incomplete sample when it is
    met; and, when the count or (with `verify`) the sha256 differ, at the end of the shard,
    before its last sample (so that a reader that stops after the last sample still gets the
    check).
    """
    fs, path = filesystem(url)
    try:
        actual = fs.size(path)
    except FileNotFoundError:
        raise ShardError(f"shard {url} is missing (it is listed in the manifest)") from None
    except OSError as err:
        raise ShardError(f"shard {url} cannot be read: {_one_line(err)}") from None
    if actual != size:
        raise ShardError(
            f"shard {url} has {actual} bytes, the manifest says {size}: it was changed"
        )
    count, last = 0, None
    try:
        with fs.open(path, "rb") as raw:
            hashed = _HashingReader(raw) if verify else None
            stream = io.BufferedReader(hashed, READ_SIZE) if verify else raw
            for sample in _tar_samples(stream):
                _check_members(sample, url)
                count += 1
                if last is not None:
                    yield last
                last = sample  # held back: the shard is checked before its last sample goes
            while verify and stream.read(READ_SIZE):  # the end-of-archive padding is hashed too
                pass
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise ShardError(
            f"shard {url} is damaged (after {count} samples): {_one_line(err)}"
        ) from None
    _check_whole(url, hashed, count, samples, size, sha256)
    if last is not None:
        yield last


def _check_whole(url: str, hashed, count: int, samples: int, size: int, sha256: str) -> None:
    if count != samples:
        raise ShardError(
            f"shard {url}: the manifest promises {samples} samples, the shard holds {count}"
        )
    if hashed is not None and (hashed.bytes != size or hashed.digest.hexdigest() != sha256):
        raise ShardError(
            f"shard {url}: its sha256 does not match the manifest (damaged or replaced); "
            f"{max(count - 1, 0)} of its samples had been used before the check"
        )


def _tar_samples(stream) -> Iterator[dict]:
    """Samples of a streamed tar: consecutive members `<key>.<name>` grouped by key."""
    sample: dict = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _, name = member.name.partition(".")
            if sample and key != sample["__key__"]:
                yield sample
                sample = {}
            sample.setdefault("__key__", key)
            if name in sample:
                raise ValueError(f"duplicate member {member.name}")
            sample[name] = tar.extractfile(member).read()
            tar.members = []  # streaming: do not keep every header in memory
    if sample:
        yield sample


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
