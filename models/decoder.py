"""The STM decoder: compress the read-out to `channels`, then refine x2 twice with skips.

    m4 = ResBlock(conv3x3(concat(read, query value)))          stride 16
    m3 = Refine(res3, m4)                                      stride 8
    m2 = Refine(res2, m3)                                      stride 4
    logit = upsample_x4(conv3x3(relu(m2)))                     input size

One output channel per object: the foreground logit (STM's two-channel softmax over
background/foreground is the sigmoid of their difference, so one channel is equivalent).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), pre-activation, no normalisation (as in STM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Refine(nn.Module):
    """Upsample the coarser decoder feature x2 and add the encoder skip feature."""

    def __init__(self, skip_channels: int, channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, channels, kernel_size=3, padding=1)
        self.skip_block = ResBlock(channels)
        self.merge_block = ResBlock(channels)

    def forward(self, skip: Tensor, coarse: Tensor) -> Tensor:
        skip = self.skip_block(self.skip_conv(skip))
        upsampled = F.interpolate(
            coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.merge_block(skip + upsampled)


class Decoder(nn.Module):
    def __init__(self, in_channels: int, res3_channels: int, res2_channels: int, channels: int):
        super().__init__()
        self.compress = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.block = ResBlock(channels)
        self.refine3 = Refine(res3_channels, channels)
        self.refine2 = Refine(res2_channels, channels)
        self.predict = nn.Conv2d(channels, 1, kernel_size=3, padding=1)

    def forward(self, feature: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """feature [N, in, h, w] (stride 16) -> foreground logit [N, 1, 16h, 16w]."""
        m4 = self.block(self.compress(feature))
        m3 = self.refine3(res3, m4)
        m2 = self.refine2(res2, m3)
        logit = self.predict(F.relu(m2))
        return F.interpolate(logit, scale_factor=4, mode="bilinear", align_corners=False)
