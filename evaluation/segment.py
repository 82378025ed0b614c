"""Segmenting a video with a trained model: frames streamed through `VideoSegmenter` from the
first frame's mask, the network at an internal size, masks returned at each frame's own size.

The internal size (`resolution`) is by default the model's own: the size it was trained at
(`train_size` in its config), so a model trained on 384 px clips segments at 384 px. The
resizing is the segmenter's alone (frames bilinearly, masks back bilinearly then argmax).

`run(SegmentConfig)` is the `vos segment` stage: masks as palette PNGs named like the frames,
and optionally an overlay animation. It checks every frame's size before any work and writes
into a temporary folder moved into place at the end: a failed run leaves no partial `out`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from core.cli import progress_bar
from core.config import StrictModel
from core.masks import (
    MaskError,
    frame_size,
    list_frames,
    overlay,
    read_frame,
    read_mask,
    write_mask,
)
from models import VideoSegmenter
from tracking.model_store import load_model

RESOLUTION_HELP = (
    "model (the size the model was trained at; its frames' own size if unknown), original, "
    "<N>p (short side N px, e.g. 120p) or a scale in (0, 1]"
)


def check_resolution(value: str | float) -> str | float:
    if isinstance(value, str) and (
        value in ("model", "original") or re.fullmatch(r"[1-9]\d*p", value)
    ):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"resolution must be {RESOLUTION_HELP}")


def internal_size(resolution: str | float, frame_shape: tuple[int, int]) -> int | str:
    """`VideoSegmenter`'s `internal_size` for `resolution` and frames of (height, width)."""
    resolution = check_resolution(resolution)
    if resolution == "model":
        return "train"
    if resolution == "original":
        return "original"
    if isinstance(resolution, str):
        return int(resolution[:-1])
    return max(1, round(min(frame_shape) * resolution))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but no CUDA GPU is available")
    return device


@dataclass(frozen=True)
class Step:
    """One segmented frame: the frame, its labels at its size, the model's time and memory."""

    frame: np.ndarray
    labels: np.ndarray
    seconds: float
    state_nbytes: int


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    return np.array(Image.fromarray(array).resize((width, height), resample=resample))


def segment_video(
    net: torch.nn.Module,
    frames: Iterable[np.ndarray],
    first_labels: np.ndarray,
    resolution: str | float = "model",
    device: str = "cpu",
) -> Iterator[Step]:
    """Segment a stream of RGB frames (uint8 [H, W, 3]) given the first frame's labels.

    Yields one `Step` per frame, labels at the frame's size; the first carries `first_labels`
    themselves. Every frame must have the first frame's size.
    """
    size = internal_size(resolution, first_labels.shape)
    segmenter = VideoSegmenter(net, device=device, internal_size=size)
    for index, frame in enumerate(frames):
        if frame.shape[:2] != first_labels.shape:
            raise MaskError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first mask is "
                f"{first_labels.shape[1]}x{first_labels.shape[0]}"
            )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = segmenter.step(frame, labels=first_labels if index == 0 else None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        labels = first_labels if index == 0 else out.labels
        yield Step(
            frame, np.asarray(labels, dtype=np.uint8), seconds, int(segmenter.state_nbytes())
        )


class SegmentConfig(StrictModel):
    model: str = Field(
        min_length=1, description="models:/name@alias, runs:/id/model, checkpoint or .pt"
    )
    frames: str = Field(min_length=1, description="folder of frames (jpg/png), in name order")
    mask: str = Field(min_length=1, description="the first frame's mask (palette or 0/255 PNG)")
    out: str = Field(min_length=1, description="folder for the masks (palette PNGs)")
    overlay: str | None = Field(None, description="also write an overlay animation (.gif or .mp4)")
    resolution: str | float = Field("model", description=RESOLUTION_HELP)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    overlay_fps: float = Field(10.0, gt=0)
    overlay_width: int = Field(480, gt=0, description="overlay frames are scaled to this width")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | float) -> str | float:
        return check_resolution(value)

    @field_validator("overlay")
    @classmethod
    def _overlay_format(cls, value: str | None) -> str | None:
        suffix = Path(value).suffix.lower() if value is not None else None
        if suffix not in (None, ".gif", ".mp4"):
            raise ValueError("overlay must end in .gif or .mp4")
        if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
            raise ValueError(
                "an .mp4 overlay needs the imageio-ffmpeg package; write a .gif instead"
            )
        return value


@dataclass(frozen=True)
class SegmentResult:
    frames: int
    objects: int
    seconds: float
    out: Path
    overlay: Path | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


class OverlayWriter:
    """Collects small overlay frames and writes them as one GIF (or MP4) at the end."""

    def __init__(self, path: Path, width: int, fps: float):
        self.path, self.width, self.fps = path, width, fps
        self.frames: list[np.ndarray] = []

    def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
        height = max(1, round(frame.shape[0] * self.width / frame.shape[1]))
        picture = overlay(frame, labels)
        self.frames.append(_resize(picture, (height, self.width), Image.Resampling.BILINEAR))

    def write(self) -> None:
        """Write the animation atomically (a temporary file beside it, then renamed)."""
        import imageio.v3 as iio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        try:
            if self.path.suffix.lower() == ".gif":
                iio.imwrite(partial, np.stack(self.frames), duration=1000 / self.fps, loop=0)
            else:
                iio.imwrite(partial, np.stack(self.frames), fps=self.fps)
            os.replace(partial, self.path)
        finally:
            partial.unlink(missing_ok=True)


def check_frame_sizes(frame_paths: list[Path], mask_size: tuple[int, int], mask: str) -> None:
    """Every frame has the first mask's size, read from the files' headers (no decoding);
    else one line naming the first frame that differs."""
    height, width = frame_size(frame_paths[0])
    if mask_size != (height, width):
        raise MaskError(
            f"the first mask is {mask_size[1]}x{mask_size[0]} but the frames are "
            f"{width}x{height} ({mask})"
        )
    for path in frame_paths[1:]:
        size = frame_size(path)
        if size != (height, width):
            raise MaskError(
                f"{path}: frame is {size[1]}x{size[0]} but the first frame is {width}x{height}; "
                "all frames must have one size"
            )


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`; its files are moved into `out` when the block ends
    without an error, and it is removed either way: `out` never holds part of a run."""
    if out.exists() and not out.is_dir():
        raise MaskError(f"{out}: exists and is not a folder")
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
    except OSError as err:
        raise MaskError(f"{out}: cannot create the output folder: {err.strerror}") from None
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
            return
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(config: SegmentConfig) -> SegmentResult:
    """Segment `config.frames` from `config.mask`; masks (and an overlay) appear all at once."""
    frame_paths = list_frames(config.frames)
    first_labels = read_mask(config.mask)
    object_ids = np.unique(first_labels[first_labels > 0])
    if not len(object_ids):
        raise MaskError(f"{config.mask}: the first mask has no object (all background)")
    check_frame_sizes(frame_paths, first_labels.shape, config.mask)
    device = resolve_device(config.device)
    net = load_model(config.model, device=device)
    out = Path(config.out)
    writer = (
        OverlayWriter(Path(config.overlay), config.overlay_width, config.overlay_fps)
        if config.overlay
        else None
    )

    frames = (read_frame(path) for path in frame_paths)
    steps = segment_video(net, frames, first_labels, config.resolution, device)
    start = time.perf_counter()
    with staged_folder(out) as staging, progress_bar() as progress:
        task = progress.add_task("segmenting", total=len(frame_paths))
        for path, step in zip(frame_paths, steps, strict=True):
            write_mask(staging / f"{path.stem}.png", step.labels)
            if writer is not None:
                writer.add(step.frame, step.labels)
            progress.advance(task)
        if writer is not None:
            writer.write()
    return SegmentResult(
        frames=len(frame_paths),
        objects=len(object_ids),
        seconds=time.perf_counter() - start,
        out=out,
        overlay=writer.path if writer else None,
    )
