"""Streaming inference: feed a video one frame at a time, keep only the per-video memory.

For `gc` and `gvos_scm` the memory is one C_N x C_M matrix per object, so the state does
not grow with the video; for `stm` it grows by the STM rule.

Objects may first appear after frame 0 (YouTube-VOS): pass `labels` on that frame. Ids
not seen before become new objects from that frame on; their pixels override the
prediction. Ids already known are predicted as usual (YouTube-VOS annotates only the
objects that first appear on a frame).

The network runs at an internal size (Cutie's `max_internal_size`, but exact: frames are
scaled down or up): the shorter side in pixels, by default the model's `train_size` (the
size it was trained for) when its config records one, else the frame's own size. Frames
are resized bilinearly with antialiasing and given masks with nearest neighbours; the
result is always at the frame's own size: probabilities resized bilinearly, labels their
argmax, and the pixels of objects given on a frame exactly as given.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.backbone import crop_to, pad_to_stride
from models.networks import Memory, VOSNetwork

MAX_OBJECT_ID = 255  # label maps are uint8
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class FrameResult:
    probs: (
        np.ndarray
    )  # float32 [K+1, H, W]; channel i = object id i (0 = background), K = largest id
    labels: np.ndarray  # uint8 [H, W]: the most probable id per pixel


@dataclass
class _ObjectGroup:
    """Objects that entered the video on the same frame share one memory (one row each)."""

    ids: list[int]
    memory: Memory


class VideoSegmenter:
    """Segment a video frame by frame with a trained network.

    segmenter = VideoSegmenter(net, device="cuda", dtype="bfloat16")
    first = segmenter.step(frame0, labels=mask0)       # uint8 [H, W, 3], int [H, W]
    result = segmenter.step(frame1)                    # result.probs, result.labels

    `internal_size`: the shorter side (px) the network sees; "train" (default) is the
    model's `train_size` when its config has one, else the frame's own size; "original"
    is always the frame's own size.
    """

    def __init__(
        self,
        net: VOSNetwork,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        *,
        internal_size: int | str = "train",
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.internal_short_side = _short_side(internal_size, net.config.get("train_size"))
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.compute_dtype = _DTYPES[dtype]
        self.reset()

    def internal_size(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) the network sees for frames of `frame_size` (height, width)."""
        height, width = frame_size
        if self.internal_short_side is None:
            return height, width
        scale = self.internal_short_side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def reset(self) -> None:
        """Forget the current video."""
        self._groups: list[_ObjectGroup] = []
        # Each object's probabilities [N, 1, H', W'] (padded) on the last frame, kept only
        # for networks that use them (the GVOS-SCM spatial constraint).
        self._previous_probs: torch.Tensor | None = None
        self._frame_size: tuple[int, int] | None = None
        self._frame_index = 0

    @property
    def object_ids(self) -> list[int]:
        return [object_id for group in self._groups for object_id in group.ids]

    def state_nbytes(self) -> int:
        """Bytes of per-video state kept between frames (memories, previous masks if used)."""
        total = sum(group.memory.nbytes() for group in self._groups)
        if self._previous_probs is not None:
            total += self._previous_probs.nelement() * self._previous_probs.element_size()
        return total

    @torch.inference_mode()
    def step(self, frame: np.ndarray, labels: np.ndarray | None = None) -> FrameResult:
        """Segment one frame; `labels` on the first frame and where new objects appear."""
        where = f"frame {self._frame_index}"
        frame = _check_frame(frame, self._frame_size, where)
        if labels is not None:
            labels = _check_labels(labels, frame.shape[:2], where)
        new_ids = self._new_ids(labels, where)

        frame_size = frame.shape[:2]
        size = self.internal_size(frame_size)
        rgb = torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].float() / 255
        rgb = pad_to_stride(_resize_bilinear(rgb, size), mode="replicate")
        with self._autocast():
            internal = self._predict(rgb, size)  # [1 + N, h, w], background first
            probs = _resize_bilinear(internal[None].float(), frame_size)[0]  # [1 + N, H, W]
            if new_ids:
                given = torch.from_numpy(labels).to(self.device)
                internal = _add_objects(internal, _resize_nearest(given, size), new_ids)
                probs = _add_objects(probs, given, new_ids)
            self._memorise(rgb, internal[1:], new_ids)

        self._frame_size = frame_size
        self._frame_index += 1
        return self._result(probs)

    def _new_ids(self, labels: np.ndarray | None, where: str) -> list[int]:
        if labels is None:
            if not self._groups:
                raise ValueError(
                    f"{where}: the first frame needs labels (the first mask with object ids)"
                )
            return []
        new_ids = sorted(set(np.unique(labels).tolist()) - {0} - set(self.object_ids))
        if not self._groups and not new_ids:
            raise ValueError(f"{where}: no object in the first mask (all labels are 0)")
        return new_ids

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def _predict(self, rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Merged probabilities [1 + N, *size] of the N known objects (background only if none).

        rgb [1, 3, H', W']: the frame at `size`, padded to the network's stride.
        """
        if not self._groups:
            return torch.ones((1, *size), device=self.device)
        query = self.net.encode_query(rgb)
        logits, row = [], 0
        for group in self._groups:
            count = len(group.ids)
            owner = torch.zeros(count, dtype=torch.long, device=self.device)
            previous = None
            if self._previous_probs is not None:
                previous = self._previous_probs[row : row + count]
            logits.append(self.net.segment_objects(query, owner, group.memory, previous))
            row += count
        object_logits = crop_to(torch.cat(logits), size).permute(1, 0, 2, 3)  # [1, N, H, W]
        valid = torch.ones(object_logits.shape[:2], dtype=torch.bool, device=self.device)
        return self.net.merge(object_logits, valid)[0].exp()

    def _memorise(self, rgb: torch.Tensor, object_probs: torch.Tensor, new_ids: list[int]) -> None:
        """Write this frame into every object's memory; new objects start a memory here."""
        object_probs = pad_to_stride(object_probs.unsqueeze(1).float())  # [N, 1, H', W']
        keys, values = self.net.encode_memory(
            rgb.expand(len(object_probs), -1, -1, -1), object_probs
        )
        row = 0
        for group in self._groups:
            count = len(group.ids)
            group.memory.write(keys[row : row + count], values[row : row + count])
            row += count
        if new_ids:
            memory = self.net.new_streaming_memory(keys[row:], values[row:])
            self._groups.append(_ObjectGroup(list(new_ids), memory))
        if self.net.uses_previous_mask:
            self._previous_probs = object_probs

    def _result(self, probs: torch.Tensor) -> FrameResult:
        ids = self.object_ids
        by_id = torch.zeros(
            (max(ids) + 1, *probs.shape[1:]), dtype=torch.float32, device=probs.device
        )
        by_id[0] = probs[0]
        by_id[ids] = probs[1:].float()
        labels = by_id.argmax(dim=0).to(torch.uint8)
        return FrameResult(probs=by_id.cpu().numpy(), labels=labels.cpu().numpy())


def _short_side(internal_size: int | str, train_size: int | None) -> int | None:
    """The shorter side (px) frames are processed at; None: each frame's own size."""
    if internal_size == "train":
        return train_size
    if internal_size == "original":
        return None
    if isinstance(internal_size, int) and not isinstance(internal_size, bool) and internal_size > 0:
        return internal_size
    raise ValueError(
        "internal_size must be 'train', 'original' or a positive number of pixels, "
        f"got {internal_size!r}"
    )


def _resize_bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """images [N, C, H, W] -> [N, C, *size], bilinear with antialiasing (no-op at `size`)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map [H, W] of ids -> [*size], nearest neighbour (no-op at `size`)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    resized = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].to(labels.dtype)


def _add_objects(probs: torch.Tensor, labels: torch.Tensor, new_ids: list[int]) -> torch.Tensor:
    """Append the given masks of new objects; they own their pixels outright."""
    new_masks = torch.stack([labels == object_id for object_id in new_ids]).to(probs.dtype)
    covered = new_masks.amax(dim=0, keepdim=True) > 0
    return torch.cat([probs.masked_fill(covered, 0.0), new_masks])


def _check_frame(frame, expected_size: tuple[int, int] | None, where: str) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(
            f"{where}: frame must be a numpy array uint8 [H, W, 3], got {type(frame).__name__}"
        )
    if frame.dtype.kind == "f" and np.isnan(frame).any():
        raise ValueError(f"{where}: frame contains NaN values; expected uint8 RGB [H, W, 3]")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        raise ValueError(
            f"{where}: frame is greyscale {frame.shape}; expected RGB [H, W, 3] (convert it to RGB)"
        )
    if frame.ndim == 3 and frame.shape[2] == 4:
        raise ValueError(
            f"{where}: frame has 4 channels (RGBA?) {frame.shape}; expected RGB [H, W, 3]"
        )
    if frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"{where}: frame has shape {frame.shape}; expected RGB [H, W, 3]")
    if frame.dtype != np.uint8:
        raise ValueError(f"{where}: frame has dtype {frame.dtype}; expected uint8 RGB in 0..255")
    if expected_size is not None and frame.shape[:2] != expected_size:
        raise ValueError(
            f"{where}: frame size {frame.shape[:2]} differs from the video's {expected_size} (H, W); "
            "call reset() to start a new video"
        )
    return np.ascontiguousarray(frame)


def _check_labels(labels, frame_size: tuple[int, int], where: str) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        kind = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(
            f"{where}: labels must be an integer numpy array [H, W] of object ids, got {kind}"
        )
    if labels.shape != frame_size:
        raise ValueError(
            f"{where}: labels have shape {labels.shape} but the frame is {frame_size} (H, W)"
        )
    if labels.min() < 0 or labels.max() > MAX_OBJECT_ID:
        raise ValueError(
            f"{where}: labels must be object ids in 0..{MAX_OBJECT_ID}, got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)
