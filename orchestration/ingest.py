"""Find the video sequences under an incoming prefix and check each one before training.

    incoming/JPEGImages/480p/<seq>/*.jpg + incoming/Annotations/480p/<seq>/*.png   (DAVIS)
    incoming/JPEGImages/<video>/*.jpg    + incoming/Annotations/<video>/*.png      (YouTube-VOS)

Every sequence gets a fingerprint (sha256 over its files' names and sizes), so a sequence that
is re-uploaded with other content counts as new, and a verdict: usable, or the one-line reason
it is not (a corrupt frame, a mask of another size, unexpected mask values, an empty first
mask, too few annotated frames). Scanning and decoding are datagen's; this module only groups
its findings by sequence for the retraining workflow.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Literal

from core.storage import filesystem
from datagen import sources

__all__ = ["IncomingSequence", "find_sequences"]

Layout = Literal["davis", "youtube"]


@dataclass(frozen=True)
class IncomingSequence:
    name: str
    fingerprint: str
    problem: str | None = None  # None: usable

    @property
    def usable(self) -> bool:
        return self.problem is None


def find_sequences(
    url: str, layout: Layout = "davis", resolution: str = "480p"
) -> list[IncomingSequence]:
    """Every sequence under `url`, with its fingerprint and verdict, in name order."""
    image_dir, mask_dir = _folders(layout, resolution)
    fingerprints = _fingerprints(url, [image_dir, mask_dir])
    scan = sources.scan_davis(url, resolution) if layout == "davis" else sources.scan_youtube(url)
    problems: dict[str, str] = {}
    for skip in scan.skipped:
        name = _sequence_of(skip.source, image_dir, mask_dir)
        problems.setdefault(
            name, f"{skip.reason}: {skip.source}" + (f" ({skip.detail})" if skip.detail else "")
        )
    for video in scan.sources:
        if video.source_id not in problems:
            problem = _check_frames(video)
            if problem:
                problems[video.source_id] = problem
    names = sorted(set(fingerprints) | set(problems))
    return [
        IncomingSequence(name, fingerprints.get(name, ""), problems.get(name)) for name in names
    ]


def _folders(layout: Layout, resolution: str) -> tuple[str, str]:
    if layout == "davis":
        return f"JPEGImages/{resolution}", f"Annotations/{resolution}"
    return "JPEGImages", "Annotations"


def _check_frames(video: sources.VideoSource) -> str | None:
    """Decode every annotated frame; the first must show an object."""
    for position in range(len(video.frames)):
        try:
            _, labels = video.load_frame(position)
        except sources.BadInput as err:
            return str(err)
        if position == 0 and not labels.any():
            return f"{sources.EMPTY_MASK}: {video.source_id} first annotated frame has no object"
    return None


def _fingerprints(url: str, folders: list[str]) -> dict[str, str]:
    """sha256 per sequence over (relative path, size) of its files, from one listing per folder."""
    fs, root = filesystem(url)
    entries: dict[str, list[str]] = {}
    for folder in folders:
        base = posixpath.join(root, folder)
        if not fs.isdir(base):
            continue
        for path, info in fs.find(base, detail=True).items():
            if info.get("type") == "directory":
                continue
            inner = posixpath.relpath(path, base)
            if "/" not in inner:
                continue
            sequence = inner.split("/", 1)[0]
            entries.setdefault(sequence, []).append(
                f"{folder}/{inner}:{int(info.get('size') or 0)}"
            )
    return {
        name: hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
        for name, lines in entries.items()
    }


def _sequence_of(source: str, image_dir: str, mask_dir: str) -> str:
    """The sequence a skipped item belongs to (`JPEGImages/480p/<seq>/x.jpg`, `<seq>/x`, `<seq>`)."""
    for base in (image_dir, mask_dir):
        if source.startswith(base + "/"):
            source = source[len(base) + 1 :]
            break
    return source.split("/", 1)[0]
