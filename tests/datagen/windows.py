"""Helper of the data tests: video-window shard sets, made with the generation job's own
planning and shard code in this process (no Ray)."""

from __future__ import annotations

from datagen.generate import GenerateConfig, plan_set, write_set_manifest
from datagen.shards import build_shard


def write_windows(
    url: str,
    *,
    videos: int = 3,
    frames: int = 12,
    max_skip: int = 4,
    size: int = 48,
    clips_per_shard: int = 3,
    source: dict | None = None,
) -> str:
    """A window set of procedural videos (or of `source`, e.g. a YouTube-VOS folder) at `url`."""
    config = GenerateConfig.model_validate(
        {
            "source": source
            or {
                "kind": "procedural_videos",
                "procedural": {
                    "count": videos,
                    "frames": frames,
                    "width": 96,
                    "height": 72,
                    "num_objects": 2,
                    "seed": 4,
                },
            },
            "output": {"url": url},
            "clips": {"size": size, "clips_per_shard": clips_per_shard, "max_skip": max_skip},
        }
    )
    plan = plan_set(config)
    write_set_manifest(plan, [build_shard(spec, url) for spec in plan.specs])
    return url
