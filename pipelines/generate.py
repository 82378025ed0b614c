"""Generate training clips as WebDataset shards on object storage, as a Ray job.

    python pipelines/generate.py --config configs/generate_images.yaml output.url=s3://data/msra
    ray job submit --working-dir . -- python pipelines/generate.py --config configs/generate_videos.yaml

Steps, in this order:

1. Validate the config and check the output storage (unreachable endpoint, missing
   credentials or bucket: one line, before any work).
2. Scan the source (image + mask folders, DAVIS, YouTube-VOS or procedural) and plan the
   shards: which clips go where, and every clip's seed, from (seed, shard index).
3. One Ray task per shard (`datagen.shards.build_shard`). A task first checks whether its
   shard already exists with the right bytes (a rerun after a crash or kill keeps those) and
   otherwise makes it, skipping and counting bad inputs.
4. Write `manifest.json` last, then print a summary: clips, shards, bytes, skipped inputs by
   reason, clips/s.

The same config, seed and sources give byte-identical shards and manifest. Ray: `ray.init()`
joins the cluster in RAY_ADDRESS (or the one `ray job submit` runs on), else starts a Ray on
this machine for the duration of the job.
"""

from __future__ import annotations

import sys

from core.cli import EXIT_OK, EXIT_USAGE, fail, stage_parser
from core.config import ConfigError, load_config
from core.storage import StorageError
from datagen.generate import GenerateConfig, GenerateError, run


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "generate",
        "Generate training clips as WebDataset shards (a Ray job).",
        epilog="example: python pipelines/generate.py --config configs/generate_demo.yaml "
        "clips.size=64",
    )
    args = parser.parse_args(argv)
    try:
        run(load_config(GenerateConfig, args.config, args.overrides))
    except (ConfigError, StorageError, GenerateError) as err:
        fail(None, err)  # each names what is wrong and where
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
