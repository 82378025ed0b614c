"""The GVOS-SCM additions to GC: ASPP, the spatial constraint module, boundary refinement.

Their order in the network (`models.networks.GVOSSCMNet`): ASPP on the distributed context,
then the spatial constraint on the decoder input, then the decoder, then the refinement.

No batch norm in these new layers: batch norm is frozen throughout training (both papers),
and a frozen, freshly initialised batch norm is only a fixed identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3) on the distributed context D.

    out = relu(conv1x1(concat(relu(conv1x1 x), relu(conv3x3_r x) for r in rates,
                              broadcast(relu(conv1x1(avgpool x))))))
    """

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int, rates: list[int]):
        super().__init__()
        branches = [nn.Conv2d(in_channels, branch_channels, kernel_size=1)]
        branches += [
            nn.Conv2d(in_channels, branch_channels, kernel_size=3, padding=r, dilation=r)
            for r in rates
        ]
        self.branches = nn.ModuleList(branches)
        self.image_pool = nn.Conv2d(in_channels, branch_channels, kernel_size=1)
        self.project = nn.Conv2d(branch_channels * (len(branches) + 1), out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [F.relu(branch(x)) for branch in self.branches]
        pooled = F.relu(self.image_pool(x.mean(dim=(2, 3), keepdim=True)))
        outputs.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return F.relu(self.project(torch.cat(outputs, dim=1)))


class SpatialConstraint(nn.Module):
    """Gate a feature map with where the object was in the previous frame.

    gate = sigmoid(conv3x3(concat(f, m_{t-1})));  f' = f * gate   (one spatial gate map)

    In GVOS-SCM, f is the decoder input: [ASPP(distributed context), query value].
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels + 1, 1, kernel_size=3, padding=1)

    def forward(self, feature: Tensor, previous_mask: Tensor) -> Tensor:
        """feature [N, C, h, w]; previous_mask [N, 1, H, W] object probability at input size."""
        mask = F.adaptive_avg_pool2d(previous_mask.to(feature.dtype), feature.shape[-2:])
        gate = torch.sigmoid(self.gate(torch.cat([feature, mask], dim=1)))
        return feature * gate


class BoundaryRefinement(nn.Module):
    """Boundary-aware residual refinement (BASNet's RRM): S_refined = S_coarse + S_residual.

    A small U-shaped encoder-decoder (`depth` x2 poolings, `channels` wide) on the coarse
    logit map predicts the residual. Input sizes must be multiples of 2**depth.
    """

    def __init__(self, channels: int, depth: int = 4):
        super().__init__()
        self.inp = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth))
        self.bridge = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.up = nn.ModuleList(
            nn.Conv2d(2 * channels, channels, 3, padding=1) for _ in range(depth)
        )
        self.out = nn.Conv2d(channels, 1, kernel_size=3, padding=1)

    def forward(self, coarse: Tensor) -> Tensor:
        """coarse: [N, 1, H, W] logit -> refined logit, same shape."""
        x = self.inp(coarse)
        skips = []
        for conv in self.down:
            x = F.relu(conv(x))
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2)
        x = F.relu(self.bridge(x))
        for conv, skip in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = F.relu(conv(torch.cat([x, skip], dim=1)))
        return coarse + self.out(x)
