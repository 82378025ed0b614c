"""Merging per-object predictions into one per-pixel distribution over {background, objects}.

Each object is segmented on its own (one batch row per object) into a foreground logit
z_k; these functions turn the K logits of a sample into log-probabilities over K + 1
classes that sum to one per pixel. Both are differentiable and used in training and
inference. Objects marked invalid (absent from the sample) get probability exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

_PROB_EPS = 1e-7  # STM's clamp before taking logits
_ABSENT_LOGIT = -1e4  # exp() of this is exactly 0 in float32, and it stays finite


def soft_aggregate(object_logits: Tensor, valid: Tensor) -> Tensor:
    """STM / GVOS-SCM soft aggregation.

        p_k = sigmoid(z_k),  p_0 = prod_k (1 - p_k)
        l_k = log(p_k / (1 - p_k)) with p_k clamped to [eps, 1 - eps],  k = 0..K
        P   = softmax_k(l)

    object_logits [B, K, H, W], valid bool [B, K] -> log P [B, K+1, H, W].
    """
    present = valid[:, :, None, None]
    object_probs = torch.sigmoid(object_logits.float()) * present
    background = torch.prod(1 - object_probs, dim=1, keepdim=True)
    probs = torch.cat([background, object_probs], dim=1).clamp(_PROB_EPS, 1 - _PROB_EPS)
    logits = torch.logit(probs)
    object_part = torch.where(present, logits[:, 1:], _ABSENT_LOGIT)
    return torch.cat([logits[:, :1], object_part], dim=1).log_softmax(dim=1)


def softmax_merge(object_logits: Tensor, valid: Tensor) -> Tensor:
    """GC's merge: a softmax over the objects' foreground logits and a zero background logit.

        P = softmax(0, z_1, ..., z_K)      (for one object: P_1 = sigmoid(z_1))

    object_logits [B, K, H, W], valid bool [B, K] -> log P [B, K+1, H, W].
    """
    present = valid[:, :, None, None]
    object_logits = torch.where(present, object_logits.float(), _ABSENT_LOGIT)
    background = torch.zeros_like(object_logits[:, :1])
    return torch.cat([background, object_logits], dim=1).log_softmax(dim=1)
