"""Key / value embedding heads (STM's `KeyValue`): two 3x3 convs on the res4 feature.

The memory encoder's head gives the memory key k (C_N channels) and value v (C_M); the
query encoder's head gives the query q (C_N) and the query frame's own value (C_M).

With `coordinates` (the `key_coordinates` model option, off in the papers' models) both
convs also read each res4 cell's position (x, y) in [-1, 1] (CoordConv, Liu et al. 2018).
The GC context softmax_positions(k)^T v sums over positions, so without them it holds what
the object looks like but hardly where it was: two look-alikes give the same context. With
them a key channel can be tuned to a region, and a query in that region reads it back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KeyValueHead(nn.Module):
    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, coordinates: bool = False
    ):
        super().__init__()
        self.coordinates = coordinates
        in_channels += 2 if coordinates else 0
        self.key = nn.Conv2d(in_channels, key_channels, kernel_size=3, padding=1)
        self.value = nn.Conv2d(in_channels, value_channels, kernel_size=3, padding=1)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """feature: [N, C, h, w] -> (key [N, C_N, h, w], value [N, C_M, h, w])."""
        if self.coordinates:
            feature = torch.cat([feature, cell_coordinates(feature)], dim=1)
        return self.key(feature), self.value(feature)


def cell_coordinates(feature: Tensor) -> Tensor:
    """[N, C, h, w] -> [N, 2, h, w]: each cell's x then y, from -1 (left, top) to 1."""
    n, _, height, width = feature.shape
    y = torch.linspace(-1, 1, height, device=feature.device, dtype=feature.dtype)
    x = torch.linspace(-1, 1, width, device=feature.device, dtype=feature.dtype)
    grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=0)  # [2, h, w]
    return grid.unsqueeze(0).expand(n, -1, -1, -1)
