"""GVOS-SCM: where the spatial constraint acts, and the hybrid loss on every side output."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models import build_model
from models.losses import hybrid_loss


@pytest.fixture(scope="module")
def tiny_gvos():
    torch.manual_seed(0)
    return build_model("gvos_scm", size="tiny").eval()


def square_mask(top: int, left: int, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., top : top + 12, left : left + 12] = 1
    return mask


def test_spatial_constraint_gates_the_decoder_input_after_aspp_and_leaves_the_query(tiny_gvos):
    """decoder input = SCM([ASPP(D), query value], m_{t-1}); the query key/value ignore m_{t-1}."""
    net = tiny_gvos
    seen = {"query": [], "decoder": []}
    hooks = [
        net.query_head.register_forward_hook(lambda _, __, out: seen["query"].append(out)),
        net.decoder.register_forward_pre_hook(lambda _, args: seen["decoder"].append(args[0])),
    ]
    frame = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    owner = torch.zeros(1, dtype=torch.long)
    here, elsewhere = square_mask(4, 4), square_mask(18, 16)
    try:
        with torch.no_grad():
            memory = net.new_memory(*net.encode_memory(frame, here))
            query = net.encode_query(frame)
            net.segment_objects(query, owner, memory, previous_probs=here)
            net.segment_objects(query, owner, memory, previous_probs=elsewhere)
            (key, value), (key_moved, value_moved) = seen["query"]
            decoder_input, decoder_input_moved = seen["decoder"]
            expected = net.spatial_constraint(
                torch.cat([net.aspp(memory.read(key)), value], dim=1), here
            )
    finally:
        for hook in hooks:
            hook.remove()

    assert torch.equal(key, key_moved) and torch.equal(value, value_moved)
    assert decoder_input.shape[1] == 2 * net.config["value_channels"]
    torch.testing.assert_close(decoder_input, expected)
    assert (decoder_input - decoder_input_moved).abs().amax() > 1e-4


def test_hybrid_loss_supervises_the_coarse_and_the_refined_output(tiny_gvos, make_clip):
    """Each side output has its own hybrid loss term: gradient reaches the coarse map directly."""
    frames, labels = make_clip(batch=1, length=3, height=32, width=32, num_objects=2)
    pred = tiny_gvos(frames, labels[:, 0], num_objects=2)
    targets = labels[:, 1:]
    (coarse,) = pred.side_logits
    assert coarse.shape == pred.object_logits.shape == (1, 2, 2, 32, 32)
    assert not torch.allclose(coarse, pred.object_logits)  # the refinement changed it

    loss = tiny_gvos.loss(pred, targets)
    without_coarse = tiny_gvos.loss(dataclasses.replace(pred, side_logits=()), targets)
    object_targets = torch.stack([targets == 1, targets == 2], dim=2)
    torch.testing.assert_close(
        loss - without_coarse, hybrid_loss(coarse.flatten(0, 2), object_targets.flatten(0, 2))
    )

    coarse_grad, refined_grad = torch.autograd.grad(loss, [coarse, pred.object_logits])
    assert coarse_grad.abs().sum() > 0 and refined_grad.abs().sum() > 0


def test_loss_follows_a_change_of_the_coarse_output_only(tiny_gvos, make_clip):
    frames, labels = make_clip(batch=1, length=3, height=32, width=32, num_objects=1)
    with torch.no_grad():
        pred = tiny_gvos(frames, labels[:, 0], num_objects=1)
    targets = labels[:, 1:]
    perfect_coarse = (targets.unsqueeze(2).float() * 2 - 1) * 30
    worse_coarse = -perfect_coarse
    perfect = tiny_gvos.loss(dataclasses.replace(pred, side_logits=(perfect_coarse,)), targets)
    worse = tiny_gvos.loss(dataclasses.replace(pred, side_logits=(worse_coarse,)), targets)
    assert worse - perfect > 1.0


@pytest.mark.parametrize("name", ["gc", "stm"])
def test_gc_and_stm_have_no_side_outputs_besides_the_prediction(name, make_clip):
    frames, labels = make_clip(batch=1, length=2, height=16, width=16, num_objects=1)
    with torch.no_grad():
        pred = build_model(name, size="tiny")(frames, labels[:, 0], num_objects=1)
    assert pred.side_logits == ()
