"""Key / value embedding heads (STM's `KeyValue`): two 3x3 convs on the res4 feature.

The memory encoder's head gives the memory key k (C_N channels) and value v (C_M); the
query encoder's head gives the query q (C_N) and the query frame's own value (C_M).
"""

from __future__ import annotations

from torch import Tensor, nn


class KeyValueHead(nn.Module):
    def __init__(self, in_channels: int, key_channels: int, value_channels: int):
        super().__init__()
        self.key = nn.Conv2d(in_channels, key_channels, kernel_size=3, padding=1)
        self.value = nn.Conv2d(in_channels, value_channels, kernel_size=3, padding=1)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """feature: [N, C, h, w] -> (key [N, C_N, h, w], value [N, C_M, h, w])."""
        return self.key(feature), self.value(feature)
