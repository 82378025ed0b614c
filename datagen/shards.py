"""Writing one WebDataset shard: clips -> JPEG/PNG/JSON -> tar bytes -> storage.

A sample is one clip: `f0.jpg f1.jpg f2.jpg m0.png m1.png m2.png json` under the key
`<shard>_<clip>` (e.g. `000012_000034`). The tar is assembled in memory and written with
one atomic write, so a shard is visible only when complete. Tars are byte-identical for the
same clips: fixed member order, mtime 0, fixed owner, deterministic JPEG/PNG encoders.

Next to the shards, `_shards/shard-000012.json` records what a finished shard holds (sample
count, size, sha256, skipped inputs) and the config hash it was made with. A rerun keeps a
shard only when that record exists, has the same config hash, and the tar's bytes still
hash to the recorded sha256; anything else (missing, half-written, damaged, made with another
config) is made again. The manifest is assembled from these records.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from webdataset import TarWriter

from core.storage import exists, join, read_bytes, write_bytes_atomic
from datagen.plan import ClipPlan
from datagen.sources import BadInput
from datagen.synthesis import (
    NO_VALID_CROP,
    Clip,
    ClipSettings,
    PreparedFrames,
    SynthesisFailed,
    prepare_image,
    synthesize_image_clip,
    synthesize_video_clip,
)

__all__ = [
    "RECORDS_DIR",
    "ShardResult",
    "ShardSpec",
    "build_shard",
    "encode_clip",
    "shard_name",
    "tar_bytes",
]

RECORDS_DIR = "_shards"
PNG_COMPRESS_LEVEL = 1  # masks are flat; level 1 is as small as 6 here and several times faster


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@dataclass(frozen=True)
class ShardSpec:
    """Everything a worker needs to make shard `index` (no Ray, no config objects)."""

    index: int
    kind: str  # "image" or "video"
    clips: tuple[ClipPlan, ...]
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


class _Sources:
    """Decoded sources of one shard task: each image decoded once for all its clips, and the
    last video frames kept (consecutive clips of a video share frames)."""

    def __init__(self, settings: ClipSettings, max_frames: int = 32):
        self.settings = settings
        self.max_frames = max_frames
        self.last_image: tuple[str, PreparedFrames | BadInput] | None = None
        self.frames: dict[tuple[str, int], tuple] = {}

    def image(self, source) -> PreparedFrames:
        if self.last_image is None or self.last_image[0] != source.source_id:
            try:
                image, labels = source.load()
                value: PreparedFrames | BadInput = prepare_image(image, labels, self.settings.size)
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
        return synthesize_video_clip(sources.video(plan.source), spec.settings, plan.seed)
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
    samples, skipped, skips = [], set(), Counter()
    for position, plan in enumerate(spec.clips):
        try:
            clip = _make_clip(spec, plan, sources)
        except BadInput as bad:
            skipped.add((bad.source, bad.reason))
            continue
        except SynthesisFailed:
            skipped.add((plan.source.source_id, NO_VALID_CROP))
            continue
        if "skip" in clip.record:
            skips[str(clip.record["skip"])] += 1
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
    if spec.kind == "video":
        record["samples_by_skip"] = dict(sorted(skips.items(), key=lambda item: int(item[0])))
    write_bytes_atomic(join(output_url, spec.name), data)
    write_bytes_atomic(
        _record_url(output_url, spec.index), json.dumps(record, sort_keys=True).encode()
    )
    return ShardResult(
        record, "replaced" if existed else "written", time.perf_counter() - started, len(samples)
    )
