"""Every training step gets exactly `batch_size` clips from a real ClipStream and DataLoader."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from datagen.reader import ClipStream
from training.loop import exact_batches


@pytest.mark.parametrize(("batch_size", "loader_workers"), [(3, 2), (5, 0)])
def test_batches_are_full_and_no_clip_repeats(local_image_shards, batch_size, loader_workers):
    stream = ClipStream([local_image_shards], rank=1, world_size=2, shuffle_buffer=8)
    loader = DataLoader(stream.dataset(0), batch_size=batch_size, num_workers=loader_workers)
    batches = list(exact_batches(loader, batch_size))
    assert [len(batch["key"]) for batch in batches] == [batch_size] * len(batches)
    for batch in batches:
        assert batch["frames"].shape[:2] == (batch_size, 3)
        assert batch["labels"].shape[0] == batch["num_objects"].shape[0] == batch_size
    keys = [key for batch in batches for key in batch["key"]]
    assert len(keys) == len(set(keys))
    # this rank holds 16 clips: each DataLoader worker ends on a short batch, merged here
    assert len(batches) == stream.samples_per_rank() // batch_size
