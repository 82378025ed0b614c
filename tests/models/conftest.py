"""Fixtures for the model tests: synthetic videos of moving objects (the DAVIS sample comes
from the suite-wide `davis_root` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Run the model tests on one thread, restored afterwards.

    Their tensors are tiny, so a second thread buys little, while on an oversubscribed
    machine (shared CI runners) OpenMP's spin-waiting makes them 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_video(length: int, height: int, width: int, num_objects: int, seed: int = 0):
    """uint8 frames [T, H, W, 3] and int64 labels [T, H, W]: ellipses moving over a texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(3, height // 8 + 2, width // 8 + 2))
    texture = (
        torch.nn.functional.interpolate(
            torch.from_numpy(coarse)[None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    rows, cols = np.mgrid[0:height, 0:width]
    frames = np.empty((length, height, width, 3), np.uint8)
    labels = np.zeros((length, height, width), np.int64)
    starts = rng.uniform(0.25, 0.75, size=(num_objects, 2)) * (height, width)
    velocities = rng.uniform(-1.5, 1.5, size=(num_objects, 2))
    radii = rng.uniform(0.12, 0.22, size=(num_objects, 2)) * (height, width)
    colours = rng.uniform(0, 255, size=(num_objects, 3))
    for t in range(length):
        image = texture.copy()
        for k in range(num_objects):
            cy, cx = starts[k] + t * velocities[k]
            inside = ((rows - cy) / radii[k, 0]) ** 2 + ((cols - cx) / radii[k, 1]) ** 2 <= 1
            image[inside] = colours[k]
            labels[t][inside] = k + 1
        frames[t] = image.clip(0, 255).astype(np.uint8)
    return frames, labels


@pytest.fixture
def make_clip():
    """Factory: a training batch (frames float [B, T, 3, H, W] in [0, 1], labels int64 [B, T, H, W])."""

    def make(
        batch: int = 1, length: int = 3, height: int = 32, width: int = 48, num_objects: int = 2
    ):
        videos = [synthetic_video(length, height, width, num_objects, seed=b) for b in range(batch)]
        frames = (
            torch.stack([torch.from_numpy(v[0]) for v in videos]).permute(0, 1, 4, 2, 3).float()
            / 255
        )
        labels = torch.stack([torch.from_numpy(v[1]) for v in videos])
        return frames, labels

    return make


@pytest.fixture
def make_video():
    """Factory: uint8 frames [T, H, W, 3] and int64 labels [T, H, W] of a synthetic video."""
    return synthetic_video
