"""`manifest.json`: the table of contents of a shard set, written last.

A shard set is complete exactly when its manifest exists; readers refuse a set without one.
The manifest holds no timestamps or paths of the machine that wrote it, so the same config,
seed and sources give the same manifest bytes, whether the job ran in one go or was killed
and rerun.

    {
      "format": "vos-clips/2",
      "version": "0.1.0",                  # the vos-pipeline package that wrote it
      "kind": "image" | "video",
      "split": "train",
      "config": {...}, "config_hash": "sha256 of config",
      "source_fingerprint": "sha256 of the sources' names and sizes",
      "clip": {"frames": 3, "size": 384},
      "window": {"max_skip": 25, "short_side": 442},   # video sets only (see below)
      "shards": [{"name": "shard-000000.tar", "samples": 256, "bytes": ..., "sha256": ...}, ...],
      "total_samples": ..., "total_bytes": ...,
      "skipped": {"empty mask": 2, ...},    # distinct inputs skipped, by reason
      "skipped_examples": [["images/x.jpg", "corrupt image"], ...]
    }

An image set's samples are 3-frame clips. A video set's samples are windows of consecutive
annotated frames (shorter side `window.short_side`) that hold clips with gaps up to
`window.max_skip` raw frames; the reader draws a clip from a window every epoch. Format 1
image sets are read as they are; format 1 video sets (fixed clips) are refused: regenerate.

`check_shards` compares the manifest with one listing of the set's folder (every shard there,
with its size), the cheap check a training run makes before its first step.
"""

from __future__ import annotations

import importlib.metadata
import json
import posixpath
from collections import Counter

from core.storage import exists, filesystem, join, read_bytes, write_bytes_atomic

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "ManifestError",
    "build_manifest",
    "check_shards",
    "manifest_url",
    "package_version",
    "read_manifest",
    "shard_url",
    "write_manifest",
]

FORMAT = "vos-clips/2"
OLD_FORMAT = "vos-clips/1"  # its image sets read as before; its video sets held fixed clips
MANIFEST_NAME = "manifest.json"
MAX_EXAMPLES = 20


class ManifestError(RuntimeError):
    """A shard set that must not be read; the message is one line."""


def package_version() -> str:
    try:
        return importlib.metadata.version("vos-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def manifest_url(url: str) -> str:
    """The manifest of a set given either the set's folder or the manifest itself."""
    return url if url.endswith(".json") else join(url, MANIFEST_NAME)


def shard_url(manifest_location: str, name: str) -> str:
    """A shard's URL: shard names in a manifest are relative to the manifest's folder."""
    folder = manifest_location.rsplit("/", 1)[0] if "/" in manifest_location else "."
    return join(folder, name)


def build_manifest(
    *,
    kind: str,
    split: str | None,
    config: dict,
    config_hash: str,
    source_fingerprint: str,
    size: int,
    frames: int,
    shard_records: list[dict],
    skipped: list[tuple[str, str]],
    window: dict | None = None,
) -> dict:
    """The manifest for shards described by `shard_records` (any order) and skipped inputs.

    `skipped` holds (input, reason) pairs; an input met by several shards counts once.
    `window` ({"max_skip", "short_side"}) describes a video set's windows.
    """
    records = sorted(shard_records, key=lambda record: record["name"])
    shards = [
        {key: record[key] for key in ("name", "samples", "bytes", "sha256")} for record in records
    ]
    distinct = sorted(set(skipped))
    extra = {"window": window} if kind == "video" else {}
    return {
        "format": FORMAT,
        "version": package_version(),
        "kind": kind,
        "split": split,
        "config": config,
        "config_hash": config_hash,
        "source_fingerprint": source_fingerprint,
        "clip": {"frames": frames, "size": size},
        **extra,
        "shards": shards,
        "total_samples": sum(entry["samples"] for entry in shards),
        "total_bytes": sum(entry["bytes"] for entry in shards),
        "skipped": dict(sorted(Counter(reason for _, reason in distinct).items())),
        "skipped_examples": [list(pair) for pair in distinct[:MAX_EXAMPLES]],
    }


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(set_url: str, manifest: dict) -> str:
    """Write the manifest (atomically) into the set's folder; returns its URL."""
    url = manifest_url(set_url)
    write_bytes_atomic(url, manifest_bytes(manifest))
    return url


def read_manifest(url: str) -> dict:
    """Read a set's manifest (`url` is the set's folder or the manifest); refuse incomplete sets."""
    location = manifest_url(url)
    try:
        present = exists(location)
    except Exception as err:  # noqa: BLE001 - unreachable storage: one line
        raise ManifestError(f"cannot read {location}: {' '.join(str(err).split())}") from None
    if not present:
        raise ManifestError(
            f"no manifest at {location}: the shard set is incomplete (generation not finished) "
            "or the URL is wrong; it will not be read"
        )
    try:
        manifest = json.loads(read_bytes(location))
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"{location} is not valid JSON: {err}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") not in (FORMAT, OLD_FORMAT)
        or "shards" not in manifest
    ):
        raise ManifestError(f"{location} is not a {FORMAT} manifest")
    if manifest.get("kind") == "video" and manifest["format"] == OLD_FORMAT:
        raise ManifestError(
            f"{location} holds fixed video clips ({OLD_FORMAT}); regenerate the set with "
            "pipelines/generate.py to get video windows"
        )
    return manifest


def check_shards(url: str, manifest: dict) -> list[str]:
    """Shards of the manifest that are missing from its folder or have another size (one
    listing of the folder); each problem as a short phrase."""
    folder = manifest_url(url).rsplit("/", 1)[0]
    fs, path = filesystem(folder)
    fs.invalidate_cache(path)  # s3fs keeps listings: this one must be of now
    try:
        listed = fs.ls(path, detail=True)
    except FileNotFoundError:
        listed = []
    sizes = {posixpath.basename(entry["name"].rstrip("/")): entry.get("size") for entry in listed}
    problems = []
    for entry in manifest["shards"]:
        name, size = entry["name"], sizes.get(entry["name"])
        if size is None:
            problems.append(f"{name} is missing")
        elif int(size) != int(entry["bytes"]):
            problems.append(f"{name} has {size} bytes, the manifest says {entry['bytes']}")
    return problems
