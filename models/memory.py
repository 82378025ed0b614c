"""Per-video memories: the GC global context and the STM space-time memory.

Both are plain state objects (no parameters) built from the memory encoder's key
k [N, C_N, h, w] and value v [N, C_M, h, w] of each memorised frame, one row per object,
and both are read with the query q [N, C_N, h, w] of the frame being segmented.

Global context (GC paper, Sec. 3):

    context extraction    C_t = softmax_positions(k_t)^T v_t                (C_N x C_M)
    running mean          G_t = (t-1)/t * G_{t-1} + 1/t * C_t
    distribution          D   = softmax_channels(q) G_{t-1}                  (hw x C_M)

so the state is one C_N x C_M matrix per object whatever the video length.

Space-time memory (STM paper, Sec. 3.2), over the L = T*h*w positions of T memory frames:

    read = softmax_memory(q K^T / sqrt(C_N)) V                               (hw x C_M)

with memory frames = first frame + previous frame + every N-th frame, so it grows with
the video.

The GC supplement proves GC is STM without the softmaxes: with them removed,
D = q (1/T sum_t k_t^T v_t) = 1/T sum_t (q k_t^T) v_t, which is the linear STM read
averaged over frames. `softmax=False` gives that linear form (used by the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def extract_context(key: Tensor, value: Tensor, softmax: bool = True) -> Tensor:
    """C = softmax_positions(k)^T v: key [N, C_N, h, w], value [N, C_M, h, w] -> [N, C_N, C_M]."""
    key = key.flatten(2)
    if softmax:
        key = key.softmax(dim=-1)
    return key @ value.flatten(2).transpose(1, 2)


def distribute_context(query: Tensor, context: Tensor, softmax: bool = True) -> Tensor:
    """D = softmax_channels(q) G: query [N, C_N, h, w], context [N, C_N, C_M] -> [N, C_M, h, w]."""
    n, _, height, width = query.shape
    weights = query.flatten(2)
    if softmax:
        weights = weights.softmax(dim=1)
    read = context.to(weights.dtype).transpose(1, 2) @ weights
    return read.view(n, -1, height, width)


def space_time_read(
    query: Tensor, memory_key: Tensor, memory_value: Tensor, softmax: bool = True
) -> Tensor:
    """softmax_memory(q K^T / sqrt(C_N)) V.

    query [N, C_N, h, w]; memory_key [N, L, C_N]; memory_value [N, L, C_M] -> [N, C_M, h, w].
    Without softmax: the linear read q K^T V (no temperature).
    """
    n, _, height, width = query.shape
    q = query.flatten(2).transpose(1, 2)  # [N, hw, C_N]
    if softmax:
        read = F.scaled_dot_product_attention(q, memory_key.to(q.dtype), memory_value.to(q.dtype))
    else:
        read = (q @ memory_key.transpose(1, 2)) @ memory_value
    return read.transpose(1, 2).reshape(n, -1, height, width)


def _positions_last(x: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, hw, C]."""
    return x.flatten(2).transpose(1, 2)


class GlobalContextMemory:
    """GC state: the running mean G of the frames' contexts, one [C_N, C_M] matrix per object.

    `first_frame_weight` w (None: the paper's plain mean) keeps the given first frame's
    share of G fixed instead of letting it fade as 1/t:

        G_t = w C_0 + (1 - w) mean(C_1 .. C_t)

    A 3-frame training clip reads G = (C_0 + C_1) / 2, so w = 0.5 shows the model at every
    frame the mix it was trained on; with the plain mean, frame 0 is 1/t of G on frame t.
    The state is then G and C_0.
    """

    def __init__(
        self,
        key: Tensor,
        value: Tensor,
        softmax: bool = True,
        first_frame_weight: float | None = None,
    ):
        self.softmax = softmax
        self.first_frame_weight = first_frame_weight
        # Kept in float32 even under bf16 autocast: a running mean over thousands of
        # frames would otherwise lose the new frames' contribution to rounding.
        self.context = extract_context(key, value, softmax).float()
        self.first_context = self.context if first_frame_weight is not None else None
        self.num_frames = 1

    def write(self, key: Tensor, value: Tensor) -> None:
        """G_t = (t-1)/t G_{t-1} + 1/t C_t, or the same mean over frames 1..t beside C_0."""
        self.num_frames += 1
        frame_context = extract_context(key, value, self.softmax).float()
        weight = self.first_frame_weight
        if weight is None:
            self.context = self.context + (frame_context - self.context) / self.num_frames
            return
        # later = mean(C_1 .. C_{t-1}) = (G_{t-1} - w C_0) / (1 - w); step it to C_t.
        later_share = self.context - weight * self.first_context
        later_count = self.num_frames - 1
        self.context = self.context + ((1 - weight) * frame_context - later_share) / later_count

    def read(self, query: Tensor) -> Tensor:
        return distribute_context(query, self.context, self.softmax)

    def nbytes(self) -> int:
        kept = [self.context] if self.first_context is None else [self.context, self.first_context]
        return sum(t.nelement() * t.element_size() for t in kept)


class SpaceTimeMemory:
    """STM memory: frame 0 and every `every`-th frame kept, plus the latest (previous) frame."""

    def __init__(self, key: Tensor, value: Tensor, every: int = 5, softmax: bool = True):
        self.every = every
        self.softmax = softmax
        self.kept_key, self.kept_value = _positions_last(key), _positions_last(value)
        self.kept_frames = 1
        self.previous: tuple[Tensor, Tensor] | None = None
        self.frame_index = 0  # index (within this memory) of the last frame written

    def write(self, key: Tensor, value: Tensor) -> None:
        self.frame_index += 1
        key, value = _positions_last(key), _positions_last(value)
        if self.frame_index % self.every == 0:
            self.kept_key = torch.cat([self.kept_key, key], dim=1)
            self.kept_value = torch.cat([self.kept_value, value], dim=1)
            self.kept_frames += 1
            self.previous = None
        else:
            self.previous = (key, value)

    @property
    def num_frames(self) -> int:
        return self.kept_frames + (self.previous is not None)

    def _memory(self) -> tuple[Tensor, Tensor]:
        if self.previous is None:
            return self.kept_key, self.kept_value
        key, value = self.previous
        return torch.cat([self.kept_key, key], dim=1), torch.cat([self.kept_value, value], dim=1)

    def read(self, query: Tensor) -> Tensor:
        memory_key, memory_value = self._memory()
        return space_time_read(query, memory_key, memory_value, self.softmax)

    def nbytes(self) -> int:
        tensors = [self.kept_key, self.kept_value, *(self.previous or ())]
        return sum(t.nelement() * t.element_size() for t in tensors)
