"""Which clips go into which shard, and the seed of every clip.

The plan is a pure function of (sources in scan order, counts, base seed), so a rerun, or a
task retried on another node, makes the same shard. Sources are visited in a seeded random
order; the `clips_per_source` clips of one source are consecutive, so a shard task decodes a
source once for all its clips (the reader's shuffle buffer mixes them again).

Seeds: shard i gets `derive_seed(base_seed, "shard", i)`; clip k of shard i gets
`derive_seed(shard_seed, k)`. A clip is regenerated from (source, clip seed) alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClipPlan", "derive_seed", "plan_shards"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any sequence of ints and strings (stable across runs and machines)."""
    text = "/".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class ClipPlan:
    source: Any  # a source from datagen.sources (has source_id)
    seed: int


def plan_shards(
    sources: list,
    *,
    clips_per_source: int,
    clips_per_shard: int,
    seed: int,
    num_clips: int | None = None,
) -> list[list[ClipPlan]]:
    """Split the clips into shards of `clips_per_shard` (the last one may be smaller).

    `num_clips` (default: every source `clips_per_source` times) cuts or extends the list;
    when it exceeds the sources' clips, the seeded order is repeated with a fresh shuffle.
    """
    if not sources:
        return []
    total = num_clips if num_clips is not None else len(sources) * clips_per_source
    order: list[int] = []
    rounds = 0
    while len(order) < total:
        permutation = np.random.default_rng(derive_seed(seed, "order", rounds)).permutation(
            len(sources)
        )
        order.extend(int(i) for i in np.repeat(permutation, clips_per_source))
        rounds += 1
    order = order[:total]
    shards = []
    for shard_index in range(math.ceil(total / clips_per_shard)):
        shard_seed = derive_seed(seed, "shard", shard_index)
        members = order[shard_index * clips_per_shard : (shard_index + 1) * clips_per_shard]
        shards.append(
            [ClipPlan(sources[i], derive_seed(shard_seed, k)) for k, i in enumerate(members)]
        )
    return shards
