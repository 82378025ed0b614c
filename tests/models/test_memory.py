"""The GC and STM memories: equations, the supplement's equivalence, state size."""

from __future__ import annotations

import math

import pytest
import torch

from models.memory import (
    GlobalContextMemory,
    SpaceTimeMemory,
    distribute_context,
    extract_context,
    space_time_read,
)

N, C_N, C_M, H, W = 2, 8, 12, 5, 7


def random_frames(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(N, C_N, H, W, generator=generator, dtype=torch.float64),
         torch.randn(N, C_M, H, W, generator=generator, dtype=torch.float64))
        for _ in range(count)
    ]  # fmt: skip


def random_query(seed: int = 1) -> torch.Tensor:
    return torch.randn(
        N, C_N, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("num_frames", range(1, 21))
def test_gc_without_softmax_equals_linear_stm_read_averaged_over_frames(num_frames):
    """GC supplement: with both softmaxes removed, GC's read is STM's read / T."""
    frames = random_frames(num_frames, seed=num_frames)
    query = random_query()
    context = GlobalContextMemory(*frames[0], softmax=False)
    space_time = SpaceTimeMemory(*frames[0], every=1, softmax=False)  # every=1 keeps every frame
    for key, value in frames[1:]:
        context.write(key, value)
        space_time.write(key, value)
    assert space_time.num_frames == num_frames

    # The state keeps float32 (the running mean's dtype), so compare at float32 tolerance.
    gc_read = context.read(query.float()).double()
    stm_read = space_time.read(query) / num_frames
    torch.testing.assert_close(gc_read, stm_read, rtol=1e-5, atol=1e-4)


def test_gc_equations_match_the_paper():
    """C = softmax_positions(k)^T v; G = mean of C over frames; D = softmax_channels(q) G."""
    frames = random_frames(4)
    query = random_query()
    memory = GlobalContextMemory(*frames[0])
    for key, value in frames[1:]:
        memory.write(key, value)

    contexts = []
    for key, value in frames:
        weights = key.flatten(2).softmax(dim=2)  # over the h*w positions, per key channel
        contexts.append(torch.einsum("ncp,nmp->ncm", weights, value.flatten(2)))
    expected_context = torch.stack(contexts).mean(dim=0)
    channel_weights = query.flatten(2).softmax(dim=1)  # over the C_N channels, per position
    expected_read = torch.einsum("ncp,ncm->nmp", channel_weights, expected_context).view(
        N, C_M, H, W
    )

    torch.testing.assert_close(memory.context.double(), expected_context, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        memory.read(query.float()).double(), expected_read, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(extract_context(*frames[0]), contexts[0])
    torch.testing.assert_close(distribute_context(query, expected_context), expected_read)


def test_stm_read_is_softmax_attention_over_all_memory_positions():
    frames = random_frames(3)
    query = random_query()
    memory_key = torch.cat([k.flatten(2) for k, _ in frames], dim=2)  # [N, C_N, T*h*w]
    memory_value = torch.cat([v.flatten(2) for _, v in frames], dim=2)
    affinity = torch.einsum("ncl,ncp->nlp", memory_key, query.flatten(2)) / math.sqrt(C_N)
    expected = torch.einsum("nml,nlp->nmp", memory_value, affinity.softmax(dim=1)).view(
        N, C_M, H, W
    )

    read = space_time_read(query, memory_key.transpose(1, 2), memory_value.transpose(1, 2))
    torch.testing.assert_close(read, expected)


def test_gc_state_has_the_same_size_after_1_and_500_frames():
    frames = random_frames(2)
    memory = GlobalContextMemory(*frames[0])
    size_after_one = memory.nbytes()
    assert size_after_one == N * C_N * C_M * 4  # one float32 C_N x C_M matrix per object
    for t in range(1, 500):
        memory.write(*frames[t % 2])
    assert memory.num_frames == 500
    assert memory.nbytes() == size_after_one
    # After an even number of alternating frames the running mean is exactly their mean.
    expected = (extract_context(*frames[0]) + extract_context(*frames[1])) / 2
    torch.testing.assert_close(memory.context.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("every", [5, 3])
def test_stm_memory_keeps_first_previous_and_every_nth_frame(every):
    """Each frame's key is filled with its index, so the memory's content names its frames."""

    def frame(index):
        return torch.full((1, 1, 2, 2), float(index)), torch.full((1, 3, 2, 2), float(index))

    memory = SpaceTimeMemory(*frame(0), every=every)
    bytes_per_frame = memory.nbytes()
    for t in range(1, 23):
        memory.write(*frame(t))
        kept = [i for i in range(t + 1) if i % every == 0]
        expected_frames = kept + ([t] if t % every else [])
        memory_key, _ = memory._memory()
        held = memory_key[0, ::4, 0].tolist()  # one entry per frame (2x2 positions each)
        assert held == expected_frames, f"after frame {t}"
        assert memory.num_frames == len(expected_frames)
        assert memory.nbytes() == bytes_per_frame * len(expected_frames)


@pytest.mark.parametrize("weight", [0.5, 0.3, 1.0])
def test_gc_first_frame_weight_keeps_the_given_frames_share(weight):
    """G_t = w C_0 + (1 - w) mean(C_1 .. C_t): frame 0 does not fade as 1/t."""
    frames = random_frames(7, seed=3)
    memory = GlobalContextMemory(*frames[0], first_frame_weight=weight)
    contexts = [extract_context(key, value) for key, value in frames]
    torch.testing.assert_close(memory.context.double(), contexts[0], rtol=1e-5, atol=1e-6)
    for t in range(1, len(frames)):
        memory.write(*frames[t])
        later = torch.stack(contexts[1 : t + 1]).mean(dim=0)
        expected = weight * contexts[0] + (1 - weight) * later
        torch.testing.assert_close(memory.context.double(), expected, rtol=1e-5, atol=1e-6)
    assert memory.nbytes() == 2 * N * C_N * C_M * 4  # G and C_0, whatever the length


def test_gc_first_frame_weight_one_half_equals_the_paper_on_a_training_clip():
    """On the two memory frames of a 3-frame training clip both rules give (C_0 + C_1) / 2."""
    frames = random_frames(2, seed=4)
    paper = GlobalContextMemory(*frames[0])
    anchored = GlobalContextMemory(*frames[0], first_frame_weight=0.5)
    paper.write(*frames[1])
    anchored.write(*frames[1])
    torch.testing.assert_close(anchored.context, paper.context)
    anchored.write(*frames[0])
    paper.write(*frames[0])
    # A third frame (C_0 again): 3/4 C_0 + 1/4 C_1 against the paper's 2/3 C_0 + 1/3 C_1.
    assert not torch.allclose(anchored.context, paper.context)
