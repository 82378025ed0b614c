"""Segmenting a video with a trained model: frames streamed through `VideoSegmenter` from the
first frame's mask, at a chosen processing size, masks returned at each frame's own size.

`run(SegmentConfig)` is the `vos segment` stage: masks as palette PNGs named like the frames,
and optionally an overlay animation.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.config import StrictModel
from core.masks import MaskError, list_frames, overlay, read_frame, read_mask, write_mask
from models import VideoSegmenter
from tracking.model_store import load_model

console = Console()
RESOLUTION_HELP = "original, <N>p (short side N px, e.g. 120p) or a scale in (0, 1]"


def check_resolution(value: str | float) -> str | float:
    if isinstance(value, str) and (value == "original" or re.fullmatch(r"[1-9]\d*p", value)):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"resolution must be {RESOLUTION_HELP}")


def processing_size(height: int, width: int, resolution: str | float) -> tuple[int, int]:
    """The (height, width) the model sees for a frame of (height, width)."""
    resolution = check_resolution(resolution)
    if resolution == "original":
        return height, width
    scale = int(resolution[:-1]) / min(height, width) if isinstance(resolution, str) else resolution
    return max(1, round(height * scale)), max(1, round(width * scale))


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
    resolution: str | float = "original",
    device: str = "cpu",
) -> Iterator[Step]:
    """Segment a stream of RGB frames (uint8 [H, W, 3]) given the first frame's labels.

    Yields one `Step` per frame; the first carries `first_labels` themselves. Every frame
    must have the first frame's size.
    """
    segmenter = VideoSegmenter(net, device=device)
    size = processing_size(*first_labels.shape, resolution)
    for index, frame in enumerate(frames):
        if frame.shape[:2] != first_labels.shape:
            raise MaskError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first mask is "
                f"{first_labels.shape[1]}x{first_labels.shape[0]}"
            )
        model_frame = _resize(frame, size, Image.Resampling.BILINEAR)
        given = _resize(first_labels, size, Image.Resampling.NEAREST) if index == 0 else None
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = segmenter.step(model_frame, labels=given)
            labels = first_labels if index == 0 else _labels_at(out, frame.shape[:2])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        yield Step(
            frame, np.asarray(labels, dtype=np.uint8), seconds, int(segmenter.state_nbytes())
        )


def _labels_at(out, shape: tuple[int, int]) -> np.ndarray:
    """The most probable label per pixel at `shape` (probabilities upsampled bilinearly)."""
    if tuple(out.labels.shape) == tuple(shape):
        return np.asarray(out.labels)
    probs = torch.as_tensor(out.probs, dtype=torch.float32)[None]
    probs = torch.nn.functional.interpolate(probs, size=shape, mode="bilinear", align_corners=False)
    return probs[0].argmax(dim=0).to(torch.uint8).cpu().numpy()


class SegmentConfig(StrictModel):
    model: str = Field(
        min_length=1, description="models:/name@alias, runs:/id/model, checkpoint or .pt"
    )
    frames: str = Field(min_length=1, description="folder of frames (jpg/png), in name order")
    mask: str = Field(min_length=1, description="the first frame's mask (palette or 0/255 PNG)")
    out: str = Field(min_length=1, description="folder for the masks (palette PNGs)")
    overlay: str | None = Field(None, description="also write an overlay animation (.gif or .mp4)")
    resolution: str | float = Field("original", description=RESOLUTION_HELP)
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
        import imageio.v3 as iio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix.lower() == ".gif":
            iio.imwrite(self.path, np.stack(self.frames), duration=1000 / self.fps, loop=0)
        else:
            iio.imwrite(self.path, np.stack(self.frames), fps=self.fps)


def run(config: SegmentConfig) -> SegmentResult:
    """Segment `config.frames` from `config.mask`, writing masks (and an overlay) as it goes."""
    frame_paths = list_frames(config.frames)
    first_labels = read_mask(config.mask)
    if first_labels.max() == 0:
        raise MaskError(f"{config.mask}: the first mask has no object (all background)")
    height, width = read_frame(frame_paths[0]).shape[:2]
    if first_labels.shape != (height, width):
        raise MaskError(
            f"the first mask is {first_labels.shape[1]}x{first_labels.shape[0]} but the frames "
            f"are {width}x{height} ({config.mask})"
        )
    device = resolve_device(config.device)
    net = load_model(config.model, device=device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = (
        OverlayWriter(Path(config.overlay), config.overlay_width, config.overlay_fps)
        if config.overlay
        else None
    )

    frames = (read_frame(path) for path in frame_paths)
    steps = segment_video(net, frames, first_labels, config.resolution, device)
    start = time.perf_counter()
    columns = (TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("frames", total=len(frame_paths))
        for path, step in zip(frame_paths, steps, strict=False):
            write_mask(out / f"{path.stem}.png", step.labels)
            if writer is not None:
                writer.add(step.frame, step.labels)
            progress.advance(task)
    if writer is not None:
        writer.write()
    return SegmentResult(
        frames=len(frame_paths),
        objects=int(first_labels.max()),
        seconds=time.perf_counter() - start,
        out=out,
        overlay=writer.path if writer else None,
    )
