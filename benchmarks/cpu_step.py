"""Seconds per training step of a tiny model on the CPU, by precision and torch threads.

    python benchmarks/cpu_step.py                          # gc: fp32 and bf16, 1 and 2 threads
    python benchmarks/cpu_step.py --model gvos_scm --parallel 2

One step of `training.loop.train_step` on a random batch of 3-frame clips (2 objects), in a
process of its own, with no data path and no Ray. `--parallel N` runs N such processes at once, as
N Ray Train workers on N cores do: with 2 threads each on 2 cores they oversubscribe the
cores (the reason `training.loop.use_allotted_cpus` exists). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_process(model: str, threads: int, precision: str, size: int, steps: int) -> float:
    import torch

    from models import build_model
    from training.loop import train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model(model, size="tiny").train()
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    frames = torch.rand(4, 3, 3, size, size)
    labels = torch.randint(0, 3, (4, 3, size, size))
    for _ in range(2):  # warm-up: Adam's state, oneDNN's kernels
        train_step(net, net, optimizer, frames, labels, 2, bf16=precision == "bf16")
    started = time.perf_counter()
    for _ in range(steps):
        train_step(net, net, optimizer, frames, labels, 2, bf16=precision == "bf16")
    return (time.perf_counter() - started) / steps


def in_parallel(args: argparse.Namespace, threads: int, precision: str) -> list[float]:
    command = [sys.executable, __file__, "--one", args.model, str(threads), precision,
               str(args.size), str(args.steps)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
               for _ in range(args.parallel)]  # fmt: skip
    return [float(worker.communicate()[0]) for worker in workers]


def main() -> int:
    if sys.argv[1:2] == ["--one"]:
        model, threads, precision, size, steps = sys.argv[2:]
        print(one_process(model, int(threads), precision, int(size), int(steps)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gc", choices=["gc", "gvos_scm", "stm"])
    parser.add_argument("--size", type=int, default=96, help="clip size (px)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2, help="processes at once")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    rows = []
    for precision in ("fp32", "bf16"):
        for threads in (1, 2):
            seconds = in_parallel(args, threads, precision)
            rows.append({"precision": precision, "threads": threads, "s_per_step": seconds})
    table = Table(title=f"tiny {args.model}, batch 4 x 3 frames at {args.size} px, "
                        f"{args.parallel} processes at once")  # fmt: skip
    for column in ("precision", "threads per process", "s per step (each process)"):
        table.add_column(column)
    for row in rows:
        times = " / ".join(f"{s:.3f}" for s in row["s_per_step"])
        table.add_row(row["precision"], str(row["threads"]), times)
    Console().print(table)
    report = {"benchmark": "cpu_step", "date": time.strftime("%Y-%m-%d"),
              "settings": vars(args), "rows": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}  # fmt: skip
    path = Path(
        args.json or REPO / "benchmarks" / "out" / f"cpu_step-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
