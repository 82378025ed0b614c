"""`manifest.json`: the table of contents of a shard set, written last.

A shard set is complete exactly when its manifest exists; readers refuse a set without one.
The manifest holds no timestamps or paths of the machine that wrote it, so the same config,
seed and sources give the same manifest bytes, whether the job ran in one go or was killed
and rerun.

    {
      "format": "vos-clips/1",
      "version": "0.1.0",                  # the vos-pipeline package that wrote it
      "kind": "image" | "video",
      "split": "train",
      "config": {...}, "config_hash": "sha256 of config",
      "source_fingerprint": "sha256 of the sources' names and sizes",
      "clip": {"frames": 3, "size": 384},
      "shards": [{"name": "shard-000000.tar", "samples": 256, "bytes": ..., "sha256": ...,
                  "samples_by_skip": {"3": 17, ...}}, ...],   # samples_by_skip: video sets only
      "total_samples": ..., "total_bytes": ...,
      "skipped": {"empty mask": 2, ...},    # distinct inputs skipped, by reason
      "skipped_examples": [["images/x.jpg", "corrupt image"], ...]
    }
"""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter

from core.storage import exists, join, read_bytes, write_bytes_atomic

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "ManifestError",
    "build_manifest",
    "manifest_url",
    "package_version",
    "read_manifest",
    "shard_url",
    "write_manifest",
]

FORMAT = "vos-clips/1"
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
) -> dict:
    """The manifest for shards described by `shard_records` (any order) and skipped inputs.

    `skipped` holds (input, reason) pairs; an input met by several shards counts once.
    """
    records = sorted(shard_records, key=lambda record: record["name"])
    shards = []
    for record in records:
        entry = {key: record[key] for key in ("name", "samples", "bytes", "sha256")}
        if kind == "video":
            entry["samples_by_skip"] = record.get("samples_by_skip", {})
        shards.append(entry)
    distinct = sorted(set(skipped))
    return {
        "format": FORMAT,
        "version": package_version(),
        "kind": kind,
        "split": split,
        "config": config,
        "config_hash": config_hash,
        "source_fingerprint": source_fingerprint,
        "clip": {"frames": frames, "size": size},
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
        or manifest.get("format") != FORMAT
        or "shards" not in manifest
    ):
        raise ManifestError(f"{location} is not a {FORMAT} manifest")
    return manifest
