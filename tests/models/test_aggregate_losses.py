"""Merging objects into one distribution, and the losses."""

from __future__ import annotations

import pytest
import torch

from models.aggregate import soft_aggregate, softmax_merge
from models.losses import hybrid_loss

MERGES = [soft_aggregate, softmax_merge]


@pytest.mark.parametrize("merge", MERGES)
def test_merged_probabilities_sum_to_one_and_ignore_absent_objects(merge):
    object_logits = torch.randn(2, 3, 9, 11) * 4
    valid = torch.tensor([[True, True, True], [True, False, True]])
    probs = merge(object_logits, valid).exp()

    assert probs.shape == (2, 4, 9, 11)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 9, 11))
    assert (probs[1, 2] == 0).all()  # object 2 is absent from sample 1
    assert (probs[0, 2] > 0).all()


def test_gc_merge_of_one_object_is_its_sigmoid():
    object_logits = torch.linspace(-6, 6, 13).view(1, 1, 1, 13)
    probs = softmax_merge(object_logits, torch.ones(1, 1, dtype=torch.bool)).exp()
    torch.testing.assert_close(
        probs[0, 1], torch.sigmoid(object_logits[0, 0]), rtol=1e-5, atol=1e-6
    )


def test_soft_aggregation_follows_stm():
    """STM: p_0 = prod(1 - p_k); odds-ratio logits l = log(p / (1 - p)); softmax."""
    object_probs = torch.tensor([0.9, 0.6, 0.05]).view(1, 3, 1, 1)
    background = (1 - object_probs).prod(dim=1, keepdim=True)
    all_probs = torch.cat([background, object_probs], dim=1)
    expected = torch.softmax(torch.log(all_probs / (1 - all_probs)), dim=1)

    merged = soft_aggregate(torch.logit(object_probs), torch.ones(1, 3, dtype=torch.bool)).exp()
    torch.testing.assert_close(merged, expected)
    assert merged[0, :, 0, 0].argmax() == 1


def test_soft_aggregation_is_differentiable():
    object_logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    soft_aggregate(object_logits, torch.ones(1, 2, dtype=torch.bool))[:, 1].sum().backward()
    assert torch.isfinite(object_logits.grad).all() and object_logits.grad.abs().sum() > 0


def square_masks(shift: int = 0) -> torch.Tensor:
    masks = torch.zeros(2, 32, 32)
    masks[0, 8:20, 6:18] = 1
    masks[1, 14:28, 12:30] = 1
    return torch.roll(masks, shifts=(shift, shift), dims=(1, 2))


def test_hybrid_loss_is_near_zero_for_a_perfect_prediction_and_grows_with_a_shift():
    target = square_masks()
    perfect_logits = (target * 2 - 1) * 30

    perfect = hybrid_loss(perfect_logits, target)
    shifted_by_2 = hybrid_loss((square_masks(2) * 2 - 1) * 30, target)
    shifted_by_5 = hybrid_loss((square_masks(5) * 2 - 1) * 30, target)

    assert perfect.item() < 1e-3
    assert shifted_by_2.item() > 0.3
    assert shifted_by_5.item() > shifted_by_2.item()


def test_hybrid_loss_of_an_empty_object_predicted_empty_is_zero():
    target = torch.zeros(1, 24, 24)
    assert hybrid_loss(torch.full((1, 24, 24), -30.0), target).item() < 1e-3
    assert hybrid_loss(torch.full((1, 24, 24), 3.0), target).item() > 1.0
