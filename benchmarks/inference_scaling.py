"""Per-frame latency and per-video state memory of `gc` against `stm` as a video grows.

Streams one synthetic video (ellipses moving over a texture) through `VideoSegmenter` and
records, at frame t (0-based; frame 0 carries the first mask), the median wall-clock latency
of the frames t-window+1..t, their median process CPU time (a steadier figure on a shared
CPU: with --threads 1 it is the compute time, whatever else runs), and the bytes of
per-video state after frame t.

    python benchmarks/inference_scaling.py                         # tiny models on the CPU
    python benchmarks/inference_scaling.py --size full --device cuda --dtype bf16 --height 480 --width 854

Prints a table and writes JSON (default benchmarks/out/inference_scaling.json) with, per
model, `latency_ms_at` and `memory_bytes_at` keyed by t. Targets: `gc` latency at the last
t within 10 % of the first and constant state; `stm` state growing linearly.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from models import VideoSegmenter, build_model

DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "inference_scaling.json"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DISTINCT_FRAMES = 24  # the video cycles through this many generated frames


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["gc", "stm"], choices=["gc", "gvos_scm", "stm"]
    )
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--objects", type=int, default=1, help="objects in the video")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[10, 100, 1000], help="frame indices t to report"
    )
    parser.add_argument(
        "--window", type=int, default=5, help="frames whose median latency is reported at t"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where to write the figures"
    )
    args = parser.parse_args(argv)
    if min(args.frames) < args.window:
        parser.error(f"every --frames value must be >= --window ({args.window})")
    if args.objects < 1 or args.height < 1 or args.width < 1:
        parser.error("--objects, --height and --width must be positive")
    return args


def synthetic_video(
    count: int, height: int, width: int, num_objects: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` distinct uint8 frames [H, W, 3] and the first frame's labels [H, W]."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = (
        127 + 60 * np.sin(rows[..., None] / 7 + cols[..., None] / 11 + rng.uniform(0, 6, 3))
    ).astype(np.uint8)
    centres = rng.uniform(0.3, 0.7, size=(num_objects, 2)) * (height, width)
    radius = 0.15 * min(height, width)
    frames, first_labels = [], np.zeros((height, width), np.uint8)
    for t in range(count):
        frame = texture.copy()
        for k, (cy, cx) in enumerate(centres):
            cy, cx = cy + radius * np.sin(t / 4 + k), cx + radius * np.cos(t / 4 + k)
            inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
            frame[inside] = (60 * k + 40, 200 - 50 * k, 90)
            if t == 0:
                first_labels[inside] = k + 1
        frames.append(frame)
    return frames, first_labels


def measure(name: str, args: argparse.Namespace, frames, first_labels, progress: Progress) -> dict:
    """Stream frames 0..max(t) through one model; latency and state size at each t."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = build_model(name, size=args.size)
    segmenter = VideoSegmenter(net, device=device, dtype=DTYPES[args.dtype])
    last = max(args.frames)
    wall_ms, cpu_ms, state_bytes = [], [], {}
    task = progress.add_task(f"{name} ({args.size})", total=last + 1)
    for t in range(last + 1):
        frame = frames[t % len(frames)]
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        segmenter.step(frame, labels=first_labels if t == 0 else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_ms.append((time.perf_counter() - wall_start) * 1000)
        cpu_ms.append((time.process_time() - cpu_start) * 1000)
        if t in args.frames:
            state_bytes[t] = segmenter.state_nbytes()
        progress.advance(task)
    reported = sorted(args.frames)
    latency_at = {t: statistics.median(wall_ms[t - args.window + 1 : t + 1]) for t in reported}
    cpu_at = {t: statistics.median(cpu_ms[t - args.window + 1 : t + 1]) for t in reported}
    result = {
        "latency_ms_at": {str(t): round(ms, 3) for t, ms in latency_at.items()},
        "frames_per_s_at": {str(t): round(1000 / ms, 2) for t, ms in latency_at.items()},
        "cpu_ms_at": {str(t): round(ms, 3) for t, ms in cpu_at.items()},
        "memory_bytes_at": {str(t): state_bytes[t] for t in reported},
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    if device.type == "cuda":
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({torch.get_num_threads()} torch threads)"


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def summary_lines(results: dict, frames: list[int]) -> list[str]:
    first, last = str(min(frames)), str(max(frames))
    lines = []
    for name, figures in results.items():
        latency, cpu, memory = (
            figures[k] for k in ("latency_ms_at", "cpu_ms_at", "memory_bytes_at")
        )
        lines.append(
            f"{name}, t={first} -> t={last}: latency x{latency[last] / latency[first]:.2f}, "
            f"CPU time x{cpu[last] / cpu[first]:.2f}, state x{memory[last] / memory[first]:.2f} "
            f"({memory[first]:,} -> {memory[last]:,} bytes)"
        )
    return lines


def print_table(console: Console, results: dict, frames: list[int]) -> None:
    table = Table(title="Inference scaling: per-frame latency and per-video state")
    for column in ("model", "t", "latency ms", "frames/s", "CPU ms", "state bytes"):
        table.add_column(column, justify="right")
    for name, figures in results.items():
        for t in map(str, sorted(frames)):
            table.add_row(
                name,
                t,
                f"{figures['latency_ms_at'][t]:.1f}",
                f"{figures['frames_per_s_at'][t]:.1f}",
                f"{figures['cpu_ms_at'][t]:.1f}",
                f"{figures['memory_bytes_at'][t]:,}",
            )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            console.print("[red]--device cuda asked for, but torch sees no CUDA device[/red]")
            return 2
        torch.backends.cudnn.benchmark = True
    frames, first_labels = synthetic_video(DISTINCT_FRAMES, args.height, args.width, args.objects)

    results = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        for name in args.models:
            results[name] = measure(name, args, frames, first_labels, progress)

    report = {
        "setup": {
            "date": datetime.date.today().isoformat(),
            "device": device_name(args.device),
            "size": args.size,
            "dtype": args.dtype,
            "height": args.height,
            "width": args.width,
            "objects": args.objects,
            "window": args.window,
            "torch": torch.__version__,
            "command": "python benchmarks/inference_scaling.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "models": results,
    }
    print_table(console, results, args.frames)
    for line in summary_lines(results, args.frames):
        console.print(line)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
