"""The key/value heads, with and without each cell's coordinates (`key_coordinates`)."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from models.config import saved_config
from models.heads import KeyValueHead, cell_coordinates


def test_cell_coordinates_run_from_minus_one_to_one_left_to_right_and_top_to_bottom():
    grid = cell_coordinates(torch.zeros(2, 5, 3, 4))
    assert grid.shape == (2, 2, 3, 4)
    torch.testing.assert_close(grid[0, 0, 1], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    torch.testing.assert_close(grid[0, 1, :, 2], torch.tensor([-1.0, 0.0, 1.0]))


def test_with_coordinates_the_key_of_a_uniform_feature_says_where_each_cell_is():
    torch.manual_seed(0)
    uniform = torch.ones(1, 8, 6, 6)
    interior = (slice(None), slice(None), slice(1, 5), slice(1, 5))  # away from the padding
    blind = KeyValueHead(8, 4, 4)(uniform)[0][interior]
    placed = KeyValueHead(8, 4, 4, coordinates=True)(uniform)[0][interior]
    assert torch.allclose(blind, blind[..., :1, :1].expand_as(blind))  # the same everywhere
    assert (placed.flatten(2).std(dim=2) > 1e-3).all()  # every channel varies with position


def test_key_coordinates_is_off_by_default_checked_and_off_for_saved_models():
    with torch.device("meta"):
        plain = build_model("gc", size="tiny")
        placed = build_model("gvos_scm", size="tiny", key_coordinates=True)
    assert plain.config["key_coordinates"] is False
    assert plain.query_head.key.in_channels == plain.query_encoder.res4_channels
    for head in (placed.memory_head, placed.query_head):
        assert (
            head.key.in_channels == head.value.in_channels == placed.query_encoder.res4_channels + 2
        )
    saved = {k: v for k, v in placed.config.items() if k != "key_coordinates"}
    assert saved_config(saved)["key_coordinates"] is False  # a model saved before the option
    assert saved_config(placed.config)["key_coordinates"] is True
    with pytest.raises(ValueError, match="key_coordinates must be true or false, got 1"):
        build_model("stm", size="tiny", key_coordinates=1)
