"""Training throughput of one worker: clips/s and the fraction of time spent waiting for data.

    python benchmarks/train_throughput.py                        # tiny gc, CPU, 64 px
    python benchmarks/train_throughput.py --size full --device cuda --dtype bf16 --resolution 384
    python benchmarks/train_throughput.py --compare-loaders       # data only: WebDataset vs Ray Data
    python benchmarks/train_throughput.py --data-only --resolution 384 --clips 400
    python benchmarks/train_throughput.py --data-only --resolution 384 --manifest <video set>

It runs the training stage's own data path and step (`training.data`: `ClipStream`
through a DataLoader with decoding workers, `exact_batches`; `training.loop.train_step` with Adam, gradient
clipping and, on GPUs, bf16 autocast and channels_last) in this process, as one Ray Train
worker would, on procedural image clips written with `pipelines/generate.py` (or on
`--manifest URL`). Figures are per worker: a run with N workers trains about N times as many
clips per second while the data keeps up.

`--compare-loaders` times the data path alone, with the same shards, batch size and number of
decoding processes: the WebDataset DataLoader that training uses, and Ray Data
(`read_webdataset` + `map_batches` decoding + `iter_torch_batches`). The result is the reason
the training loop uses the WebDataset loader (see benchmarks/RESULTS.md).

`--data-only` times the training data path alone, as a rank runs it: the DataLoader with ONE
worker process (reading, sha256 checks, drawing clips from video windows, decoding, flip,
colour and crop jitter, batching) and `exact_batches`, with shard verification on and then
off, and once more in this process (no loader worker: what the hand-off through shared
memory costs). It reports clips/s and clips per CPU second of the decoding process (the
clips/s one core delivers, whatever else the machine is running). Shards are written in this process, without
Ray (procedural image clips, or `--manifest` for any set, e.g. video windows).

Prints a table and writes JSON (default benchmarks/out/train_throughput-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from core.config import load_config
from datagen import generate
from datagen.shards import build_shard
from models import build_model
from training.config import PretrainConfig
from training.data import clip_stream, epoch_loader, exact_batches
from training.loop import check_batch, make_optimizer, to_device, train_step

REPO = Path(__file__).resolve().parents[1]
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gc", choices=["gc", "gvos_scm", "stm"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--resolution", type=int, default=64, help="clip size in pixels")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 tiny, 32 full")
    parser.add_argument("--loader-workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument(
        "--clips", type=int, default=None, help="clips to generate (default: enough)"
    )
    parser.add_argument("--manifest", default=None, help="use this shard set instead of generating")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--compare-loaders", action="store_true", help="time the data path only")
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="time the data path with one loader worker, verification on and off",
    )
    parser.add_argument("--json", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 4 if args.size == "tiny" else 32
    if args.dtype == "bf16" and args.device != "cuda":
        parser.error("--dtype bf16 needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    return args


# -- data -------------------------------------------------------------------------------------


def procedural_config(args: argparse.Namespace, folder: Path) -> generate.GenerateConfig:
    """The generation config of the benchmark's procedural image clips, written to `folder`."""
    clips = args.clips or args.batch_size * (args.steps + args.warmup + 2)
    return load_config(
        generate.GenerateConfig,
        REPO / "configs" / "generate_demo.yaml",
        [
            f"output.url={folder}",
            f"source.procedural.count={clips}",
            f"source.procedural.width={max(160, args.resolution * 5 // 4)}",
            f"source.procedural.height={max(120, args.resolution)}",
            f"clips.size={args.resolution}",
            f"clips.clips_per_shard={max(8, clips // 8)}",
        ],
    )


def procedural_shards(args: argparse.Namespace, folder: Path) -> str:
    """Write procedural image clips with the generate stage (a local Ray); returns the manifest."""
    config = procedural_config(args, folder)
    return generate.run(config)["manifest"]


def training_config(args: argparse.Namespace, manifest: str) -> PretrainConfig:
    base = "pretrain_tiny.yaml" if args.size == "tiny" else f"pretrain_{args.model}.yaml"
    return load_config(
        PretrainConfig,
        REPO / "configs" / base,
        [
            f"model.name={args.model}",
            f"model.size={args.size}",
            "model.pretrained_backbone=false",
            f"data.manifests=[{manifest}]",
            f"data.batch_size={args.batch_size}",
            f"data.loader_workers={args.loader_workers}",
            f"compute.use_gpu={args.device == 'cuda'}",
            f"compute.precision={args.dtype}",
            f"compute.channels_last={args.device == 'cuda'}",
            f"compute.compile={args.compile}",
        ],
    )


def batches_forever(config: PretrainConfig, use_gpu: bool):
    """Full batches of the training data path, epoch after epoch."""
    epoch = 0
    while True:
        stream = clip_stream(config, rank=0, world_size=1, epoch=epoch)
        yield from exact_batches(
            epoch_loader(config, stream, epoch, use_gpu), config.data.batch_size
        )
        epoch += 1


# -- measurements -----------------------------------------------------------------------------


def measure_training(args: argparse.Namespace, config: PretrainConfig) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":  # as in a Ray Train worker, which gets cpus_per_worker threads
        torch.set_num_threads(max(1, int(config.compute.cpus_per_worker)))
    torch.manual_seed(0)
    net = build_model(args.model, size=args.size).to(device)
    if config.compute.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if config.compute.compile:
        net.compile()
    net.train()
    optimizer = make_optimizer(config, net)
    batches = batches_forever(config, use_gpu=device.type == "cuda")
    bf16 = config.compute.precision == "bf16"

    def step() -> float:
        waited = time.perf_counter()
        batch = next(batches)
        wait_s = time.perf_counter() - waited
        objects = check_batch(batch)
        frames, labels = to_device(batch, device)
        train_step(net, net, optimizer, frames, labels, objects, bf16, config.train.grad_clip_norm)
        return wait_s

    for _ in range(args.warmup):
        step()
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    data_wait_s = 0.0
    for _ in track(range(args.steps), description="measuring", console=console):
        data_wait_s += step()
    synchronize(device)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # this process only, not the decoders
    clips = args.steps * args.batch_size
    return {
        "clips_per_s_per_worker": clips / seconds,
        "seconds_per_step": seconds / args.steps,
        "cpu_seconds_per_step": cpu_seconds / args.steps,
        "data_wait_fraction": data_wait_s / seconds,
        "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_batches(batches, count: int, warmup: int) -> dict:
    for _ in range(warmup):
        next(batches)
    started = time.perf_counter()
    clips = 0
    for _ in range(count):
        clips += len(next(batches)["frames"])
    seconds = time.perf_counter() - started
    return {"clips_per_s": clips / seconds, "seconds_per_batch": seconds / count}


def ray_data_batches(manifest: str, batch_size: int, workers: int):
    """The same clips through Ray Data: read_webdataset, decode in map_batches, torch batches."""
    import numpy as np
    import ray
    from torchvision.io import decode_jpeg, decode_png

    from core import storage
    from datagen.manifest import manifest_url, read_manifest

    def decode(batch: dict) -> dict:
        frames, labels = [], []
        for row in range(len(batch["json"])):
            jpegs = [
                torch.frombuffer(bytearray(batch[f"f{t}.jpg"][row]), dtype=torch.uint8)
                for t in range(3)
            ]
            pngs = [
                torch.frombuffer(bytearray(batch[f"m{t}.png"][row]), dtype=torch.uint8)
                for t in range(3)
            ]
            frames.append(
                torch.stack([decode_jpeg(data) for data in jpegs]).float().div_(255).numpy()
            )
            labels.append(torch.stack([decode_png(data)[0] for data in pngs]).long().numpy())
        return {"frames": np.stack(frames), "labels": np.stack(labels)}

    location = manifest_url(manifest)
    folder = location.rsplit("/", 1)[0]
    shards = [storage.join(folder, entry["name"]) for entry in read_manifest(location)["shards"]]
    dataset = ray.data.read_webdataset(shards, decoder=None).map_batches(
        decode, batch_size=batch_size, concurrency=max(1, workers)
    )
    while True:
        yield from dataset.iter_torch_batches(batch_size=batch_size, drop_last=True)


def write_shards_here(args: argparse.Namespace, folder: Path) -> str:
    """Procedural image clips written in this process (no Ray); returns the manifest."""
    config = procedural_config(args, folder)
    plan = generate.plan_set(config)
    results = [build_shard(spec, config.output.set_url) for spec in plan.specs]
    return generate.write_set_manifest(plan, results)[0]


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children: those that ended, and those still running."""
    import resource

    import psutil

    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            running += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return ended.ru_utime + ended.ru_stime + running


def time_data_path(config: PretrainConfig, clips: int, warmup: int) -> dict:
    """The data path: clips/s and clips per CPU second of the process that decodes (the
    loader worker; this process itself with `loader_workers=0`)."""
    batches = batches_forever(config, use_gpu=False)
    for _ in range(warmup):
        next(batches)
    started, cpu_started = time.perf_counter(), children_cpu_seconds()
    main_started = time.process_time()
    done = 0
    while done < clips:
        done += len(next(batches)["key"])
    seconds = time.perf_counter() - started
    main_cpu = time.process_time() - main_started
    worker_cpu = children_cpu_seconds() - cpu_started if config.data.loader_workers else main_cpu
    return {
        "clips": done,
        "clips_per_s": done / seconds,
        "loader_worker_cpu_s": worker_cpu,
        "clips_per_cpu_s_of_the_worker": done / worker_cpu if worker_cpu > 0 else None,
        "main_process_cpu_s": main_cpu,
    }


def measure_data_path(args: argparse.Namespace, config: PretrainConfig) -> dict:
    torch.set_num_threads(1)  # as the loader worker does
    results = {}
    runs = {"verify_on": (1, True), "verify_off": (1, False), "no_loader_process": (0, True)}
    for name, (workers, verify) in runs.items():  # the last: without the shared-memory hand-off
        data = config.data.model_copy(update={"loader_workers": workers, "verify_shards": verify})
        timed = config.model_copy(update={"data": data})
        results[name] = time_data_path(timed, args.clips or 20 * args.batch_size, args.warmup)
    return results


def compare_loaders(args: argparse.Namespace, config: PretrainConfig, manifest: str) -> dict:
    warmup, count = args.warmup, args.steps
    webdataset = time_batches(batches_forever(config, use_gpu=False), count, warmup)
    ray_data = time_batches(
        ray_data_batches(manifest, args.batch_size, args.loader_workers), count, warmup
    )
    return {"webdataset_dataloader": webdataset, "ray_data": ray_data}


# -- output -----------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    table = Table(title="training throughput (one worker)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in report["settings"].items():
        table.add_row(key, str(value))
    for key, value in report.get("training", {}).items():
        table.add_row(key, "-" if value is None else f"{value:.3f}")
    for mode, figures in report.get("data_path", {}).items():
        table.add_row(
            f"data path, {mode}: clips/s | clips per worker CPU s",
            f"{figures['clips_per_s']:.1f} | {figures['clips_per_cpu_s_of_the_worker']:.1f}",
        )
    for loader, figures in report.get("loaders", {}).items():
        table.add_row(
            f"{loader}: clips/s | s/batch",
            f"{figures['clips_per_s']:.1f} | {figures['seconds_per_batch']:.3f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare_loaders:  # one local Ray for the shard generation and for Ray Data
        import ray

        ray.init(num_cpus=max(2, args.loader_workers + 1), include_dashboard=False)
    with tempfile.TemporaryDirectory(prefix="vos-bench-") as tmp:
        if args.manifest:
            manifest = args.manifest
        elif args.data_only:
            manifest = write_shards_here(args, Path(tmp) / "shards")
        else:
            manifest = procedural_shards(args, Path(tmp) / "shards")
        config = training_config(args, manifest)
        report = {
            "benchmark": "train_throughput",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python benchmarks/train_throughput.py " + " ".join(argv or sys.argv[1:]),
            "device": torch.cuda.get_device_name()
            if args.device == "cuda"
            else platform.processor() or "cpu",
            "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "settings": {
                "model": args.model,
                "size": args.size,
                "device": args.device,
                "dtype": args.dtype,
                "resolution": args.resolution,
                "batch_size": args.batch_size,
                "loader_workers": 1 if args.data_only else args.loader_workers,
                "steps": args.steps,
                "compile": args.compile,
            },
        }
        if args.compare_loaders:
            report["loaders"] = compare_loaders(args, config, manifest)
        elif args.data_only:
            report["data_path"] = measure_data_path(args, config)
        else:
            report["training"] = measure_training(args, config)
    print_table(report)
    out = (
        Path(args.json)
        if args.json
        else REPO / "benchmarks" / "out" / f"train_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
