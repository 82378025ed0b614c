"""Data generation throughput: 384 x 384 3-frame clips from 854 x 480 sources.

    python benchmarks/datagen_throughput.py                      # procedural 854 x 480 sources
    python benchmarks/datagen_throughput.py --davis-root ../shared/data/davis2016-sample

Measures, with encoding (JPEG/PNG), tar assembly and writing included:

1. clips/s per core: one process, one torch thread, `build_shard` over the planned shards
   (exactly what a Ray task runs). Per core = clips / CPU seconds of the process, so other
   load on a shared machine does not count against it; wall-clock clips/s is reported too.
   Best of `--repeats` runs (as `timeit` does: interference only ever slows a run down).
2. speed-up of 2 Ray workers over 1: the real job (`pipelines.generate.run`) on a local Ray
   with 2 CPUs, `ray.max_tasks_in_flight` 1 vs 2, wall clock, best of `--repeats` each.

Prints a table and writes JSON (`--out`) with `clips_per_s_per_core` and `speedup_2_workers`.
Targets: >= 40 clips/s per core, >= 1.8x with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from datagen.plan import plan_shards
from datagen.procedural import write_procedural_images
from datagen.shards import ShardSpec, build_shard, encode_clip, tar_bytes
from datagen.sources import scan_image_folders
from datagen.synthesis import ClipSettings, prepare_image, synthesize_image_clip

TARGET_PER_CORE = 40.0
TARGET_SPEEDUP = 1.8


def make_sources(workdir: Path, count: int, davis_root: str | None) -> tuple[list, str, dict]:
    """(image sources, description, config source section) of 854 x 480 images with masks."""
    if davis_root:
        sequence = "car-shadow"
        source = {
            "kind": "images",
            "path": davis_root,
            "image_dir": f"JPEGImages/480p/{sequence}",
            "mask_dir": f"Annotations/480p/{sequence}",
        }
        scan = scan_image_folders(davis_root, source["image_dir"], source["mask_dir"])
        return (
            scan.sources,
            f"DAVIS 2016 frames ({sequence}, {len(scan.sources)} frames, 854x480)",
            source,
        )
    root = write_procedural_images(workdir / "sources", count, seed=0, size=(854, 480))
    scan = scan_image_folders(str(root), "images", "masks")
    source = {"kind": "images", "path": str(root), "image_dir": "images", "mask_dir": "masks"}
    return scan.sources, f"procedural 854x480 JPEG + PNG mask ({count} images)", source


def per_core(
    sources: list, clips: int, clips_per_source: int, settings: ClipSettings, repeats: int
) -> dict:
    torch.set_num_threads(1)
    planned = plan_shards(
        sources, clips_per_source=clips_per_source, clips_per_shard=20, seed=0, num_clips=clips
    )
    runs = []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            cpu, wall = time.process_time(), time.perf_counter()
            made = sum(
                build_shard(
                    ShardSpec(i, "image", tuple(c), settings, f"bench{repeat}"), out
                ).clips_made
                for i, c in enumerate(planned)
            )
            runs.append((time.process_time() - cpu, time.perf_counter() - wall, made))
    best_cpu = min(r[0] for r in runs)
    best_wall = min(r[1] for r in runs)
    made = runs[0][2]
    return {
        "clips": made,
        "clips_per_source": clips_per_source,
        "clips_per_s_per_core": round(made / best_cpu, 1),
        "clips_per_s_per_core_median": round(made / statistics.median(r[0] for r in runs), 1),
        "clips_per_s_wall": round(made / best_wall, 1),
        "cpu_ms_per_clip": round(1000 * best_cpu / made, 2),
    }


def stage_breakdown(sources: list, settings: ClipSettings, samples: int = 12) -> dict:
    """CPU milliseconds per clip in each stage (best of three passes over a few sources)."""
    torch.set_num_threads(1)
    best: dict[str, float] = {}
    for _ in range(3):
        times = {"decode": 0.0, "prepare": 0.0, "warp": 0.0, "encode": 0.0, "tar": 0.0}
        encoded = []
        for index, source in enumerate(sources[:samples]):
            t0 = time.process_time()
            image, labels = source.load()
            t1 = time.process_time()
            prepared = prepare_image(image, labels, settings.size)
            t2 = time.process_time()
            clip = synthesize_image_clip(prepared, settings, index)
            t3 = time.process_time()
            encoded.append(encode_clip(clip, f"{index:06d}"))
            t4 = time.process_time()
            times["decode"] += t1 - t0
            times["prepare"] += t2 - t1
            times["warp"] += t3 - t2
            times["encode"] += t4 - t3
        t5 = time.process_time()
        tar_bytes(encoded)
        times["tar"] = time.process_time() - t5
        for stage, seconds in times.items():
            best[stage] = min(best.get(stage, float("inf")), 1000 * seconds / samples)
    return {stage: round(ms, 2) for stage, ms in best.items()}


def ray_speedup(source: dict, clips: int, size: int, repeats: int, workdir: Path) -> dict:
    import ray

    from core import cluster
    from datagen.generate import GenerateConfig, run

    cluster.connect(num_cpus=2)
    try:

        @ray.remote(num_cpus=1)
        def warm_up() -> int:
            import datagen.shards  # noqa: F401 - imports torch, kornia, PIL in the worker

            time.sleep(1.0)
            return os.getpid()

        ray.get([warm_up.remote() for _ in range(2)])
        seconds: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(repeats):
            for workers in (1, 2):
                config = GenerateConfig.model_validate(
                    {
                        "source": source,
                        "output": {"url": str(workdir / f"ray-{workers}-{repeat}")},
                        "clips": {"size": size, "num_clips": clips, "clips_per_shard": 20},
                        "seed": repeat,
                        "ray": {"max_tasks_in_flight": workers},
                    }
                )
                started = time.perf_counter()
                summary = run(config)
                seconds[workers].append(time.perf_counter() - started)
                assert summary["clips_made"] == clips, summary
    finally:
        ray.shutdown()
    one, two = min(seconds[1]), min(seconds[2])
    return {
        "clips": clips,
        "seconds_1_worker": round(one, 2),
        "seconds_2_workers": round(two, 2),
        "clips_per_s_1_worker": round(clips / one, 1),
        "clips_per_s_2_workers": round(clips / two, 1),
        "speedup_2_workers": round(one / two, 2),
        "all_seconds": {str(k): [round(v, 2) for v in vs] for k, vs in seconds.items()},
    }


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data generation throughput ({results['source']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    for run in results.get("per_core", []):
        table.add_row(
            f"clips/s per core (CPU time), {run['clips_per_source']} clip(s) per source",
            f"{run['clips_per_s_per_core']}",
            f">= {TARGET_PER_CORE:g}",
        )
        table.add_row(
            f"clips/s wall, 1 process, {run['clips_per_source']} clip(s) per source",
            f"{run['clips_per_s_wall']}",
            "",
        )
    for stage, ms in results.get("stages_ms_per_clip", {}).items():
        table.add_row(f"  stage {stage} (ms/clip)", f"{ms}", "")
    if results.get("ray"):
        ray_result = results["ray"]
        table.add_row("Ray job, 1 worker (clips/s)", f"{ray_result['clips_per_s_1_worker']}", "")
        table.add_row("Ray job, 2 workers (clips/s)", f"{ray_result['clips_per_s_2_workers']}", "")
        table.add_row(
            "speed-up, 2 workers over 1",
            f"{ray_result['speedup_2_workers']}x",
            f">= {TARGET_SPEEDUP:g}x",
        )
    table.add_row(
        "load average (1 min) before / after",
        f"{results['load_before']} / {results['load_after']}",
        "",
    )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=120, help="clips per single-process run")
    parser.add_argument(
        "--ray-clips", type=int, default=320, help="clips per Ray run (shards of 20)"
    )
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--davis-root", default=None, help="use DAVIS frames instead of procedural images"
    )
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-per-core", action="store_true")
    parser.add_argument("--out", default="benchmarks/out/datagen_throughput.json")
    args = parser.parse_args(argv)

    settings = ClipSettings(size=args.size)
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="datagen-bench-") as tmp:
        workdir = Path(tmp)
        sources, description, source_section = make_sources(
            workdir, max(args.clips, 40), args.davis_root
        )
        results: dict = {
            "source": description,
            "size": args.size,
            "cpu_count": os.cpu_count(),
            "torch_threads_per_process": 1,
        }
        if not args.skip_per_core:
            results["per_core"] = [
                per_core(sources, args.clips, cps, settings, args.repeats) for cps in (1, 4)
            ]
            results["stages_ms_per_clip"] = stage_breakdown(sources, settings)
        if not args.skip_ray:
            results["ray"] = ray_speedup(
                source_section, args.ray_clips, args.size, args.repeats, workdir
            )
    results["load_before"], results["load_after"] = load_before, round(os.getloadavg()[0], 2)
    per_core_runs = results.get("per_core") or [{}]
    results["clips_per_s_per_core"] = per_core_runs[0].get("clips_per_s_per_core")
    results["speedup_2_workers"] = results.get("ray", {}).get("speedup_2_workers")
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
