"""The training data path as the loop runs it (`training.data`): fresh clips every epoch from
video windows, counted as distinct clips; pre-generated image clips counted once however often
they come back."""

from __future__ import annotations

import itertools

from datagen.manifest import read_manifest
from training.config import FinetuneConfig, PretrainConfig
from training.data import DistinctClips, clip_stream, epoch_loader, exact_batches


def _epoch_batches(config, epoch: int):
    stream = clip_stream(config, rank=0, world_size=1, epoch=epoch)
    steps = stream.samples_per_rank() // config.data.batch_size
    loader = epoch_loader(config, stream, epoch, use_gpu=False)
    return list(itertools.islice(exact_batches(loader, config.data.batch_size), steps))


def _distinct_after(config, epochs: int) -> list[int]:
    """DistinctClips.count after each epoch, fed every batch as the loop trains on it."""
    distinct, counts = DistinctClips(), []
    for epoch in range(epochs):
        for batch in _epoch_batches(config, epoch):
            distinct.add(batch)
        counts.append(distinct.count)
    return counts


def test_video_windows_give_new_distinct_clips_every_epoch(make_tiny_config, local_video_shards):
    config = make_tiny_config(
        FinetuneConfig,
        "finetune_tiny.yaml",
        "init.model_uri=models:/unused@champion",
        f"data.manifests=[{local_video_shards}]",
        "data.loader_workers=1",
    )
    windows = read_manifest(local_video_shards)["total_samples"]
    first, second, third = _distinct_after(config, 3)
    assert first == windows - windows % config.data.batch_size  # every window once
    assert first < second <= 2 * first and second < third  # fresh draws are new clips


def test_replayed_image_clips_are_counted_once(make_tiny_config, local_image_shards):
    config = make_tiny_config(
        PretrainConfig,
        "pretrain_tiny.yaml",
        f"data.manifests=[{local_image_shards}]",
        "data.loader_workers=0",
    )
    counts = _distinct_after(config, 2)
    assert counts == [36, 36]  # augmented differently, but the same 36 clips
