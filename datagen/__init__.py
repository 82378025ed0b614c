"""Training data: sources -> clips -> WebDataset shards on object storage -> training reader.

Plain functions and no MLflow; `generate` is the job that fans the shards out as Ray tasks
(`pipelines/generate.py` is its command line). Storage URLs are `core.storage`.
One module, one job:

    sources      scanning image + mask folders, DAVIS and YouTube-VOS layouts, procedural
                 sources; decoding and checking inputs (bad input -> BadInput with a reason)
    procedural   textured scenes and videos for demos and tests, deterministic by seed
    synthesis    one clip: rotation + scale + thin-plate spline + crop in one sampling grid
    plan         which clips go into which shard, and every clip's seed
    shards       encoding clips and writing one shard (verified and kept on a rerun)
    manifest     manifest.json, written last; readers refuse a set without it
    reader       ClipStream: manifests -> torch IterableDataset split by rank and worker
    generate     the generation job: config, scan, plan, one Ray task per shard, manifest
"""
