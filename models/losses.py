"""Training losses: cross-entropy on merged predictions, and GVOS-SCM's hybrid loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.metrics import ssim
from torch import Tensor

IGNORE_INDEX = -100
SSIM_WINDOW = 11


def merged_cross_entropy(log_probs: Tensor, target: Tensor) -> Tensor:
    """Mean per-pixel cross-entropy of merged log-probabilities.

    log_probs [B, T, K+1, H, W] (already log-softmaxed); target int64 [B, T, H, W],
    pixels equal to IGNORE_INDEX are left out.
    """
    return F.nll_loss(log_probs.flatten(0, 1), target.flatten(0, 1), ignore_index=IGNORE_INDEX)


def hybrid_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BASNet's hybrid loss on per-object maps: BCE + SSIM + IoU, averaged over maps.

        l_bce  = -mean(g log p + (1 - g) log(1 - p))
        l_ssim = 1 - mean(SSIM(p, g))                  (11x11 Gaussian window)
        l_iou  = 1 - (sum(p g) + 1) / (sum(p + g - p g) + 1)    (per map)

    The +1 in l_iou makes an empty map predicted empty cost 0 (objects can leave the frame).
    logits [M, H, W] (p = sigmoid(logits)); target [M, H, W] in {0, 1}. Zero when M = 0.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    # float32 even under bf16 autocast: SSIM's constants (1e-4, 9e-4) vanish in bf16.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _hybrid_loss(logits.float().unsqueeze(1), target.float().unsqueeze(1))


def _hybrid_loss(logits: Tensor, target: Tensor) -> Tensor:
    probs = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    window = SSIM_WINDOW if min(logits.shape[-2:]) > SSIM_WINDOW else 3
    ssim_term = 1 - ssim(probs, target, window_size=window).mean()
    intersection = (probs * target).sum(dim=(1, 2, 3))
    union = (probs + target - probs * target).sum(dim=(1, 2, 3))
    iou_term = (1 - (intersection + 1) / (union + 1)).mean()
    return bce + ssim_term + iou_term
