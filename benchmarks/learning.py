"""Does the pipeline learn? The tiny model, trained end to end, against copying the first mask.

    python benchmarks/learning.py                                  # DAVIS sample, 64p, CPU
    python benchmarks/learning.py --davis /data/davis2017-val --resolution 120p --pretrain-epochs 8

Through the real stages, on a Ray started here (or RAY_ADDRESS) and an MLflow store under the
output folder (or MLFLOW_TRACKING_URI):

1. `pipelines/generate.py`: procedural image clips (configs/generate_demo.yaml) and procedural
   video clips (configs/generate_demo_videos.yaml);
2. `pipelines/pretrain.py` on the image clips (configs/pretrain_tiny.yaml), then
   `pipelines/finetune.py` from that checkpoint on the video clips (configs/finetune_tiny.yaml);
3. `pipelines/evaluate.py`, for the pretrained and for the fine-tuned model, on held-out
   procedural videos (other seeds; 160x120, the training domain) and on every DAVIS sequence
   at a reduced input size (the masks are scored at full size).

The baseline predicts the first frame's mask on every frame (what a model that learned
nothing about motion would do at best). Prints a table and writes JSON (default
benchmarks/out/learning-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.config import load_config
from core.masks import read_mask
from datagen import generate
from datagen.procedural import write_procedural_videos
from evaluation.folders import sequence_names
from evaluation.metrics import score_sequence, summarize
from evaluation.runner import EvaluateConfig
from registry import scores
from training.config import FinetuneConfig, PretrainConfig
from training.driver import run_training

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DAVIS = os.environ.get(
    "VOS_TEST_DAVIS", str(REPO.parent / "shared" / "data" / "davis2016-sample")
)
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", default=DEFAULT_DAVIS, help="DAVIS root to evaluate on")
    parser.add_argument(
        "--resolution", default="64p", help="model input size (original, <N>p, scale)"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=200, help="procedural images to pretrain on")
    parser.add_argument("--videos", type=int, default=24, help="procedural videos to fine-tune on")
    parser.add_argument("--held-out", type=int, default=8, help="held-out procedural videos")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "out" / "learning"), help="work folder"
    )
    parser.add_argument(
        "--checkpoints",
        nargs=2,
        metavar=("PRETRAINED", "FINETUNED"),
        help="evaluate these checkpoints of an earlier run instead of training",
    )
    parser.add_argument("--json", default=None, help="output JSON path")
    return parser.parse_args(argv)


def first_mask_baseline(data: str) -> dict:
    """J&F of predicting the first frame's mask on every frame."""
    scores = []
    for name in sequence_names(data):
        folder = Path(data) / "Annotations" / "480p" / name
        truth = [read_mask(path) for path in sorted(folder.glob("*.png"))]
        scores.append(score_sequence(name, truth, [truth[0]] * len(truth)))
    return summarize(scores)


def held_out_videos(out: Path, count: int) -> str:
    """Procedural videos the models never saw (other seeds), in the DAVIS layout."""
    return str(write_procedural_videos(out / "held-out-videos", count, 16, seed=99, num_objects=2))


def train(args: argparse.Namespace, out: Path, tracking: list[str]) -> tuple[str, str, dict]:
    """Generate both shard sets, pretrain, fine-tune; returns the two checkpoints and timings."""
    import ray

    if not ray.is_initialized():  # RAY_ADDRESS's cluster, else a new one (never a stray one)
        address = os.environ.get("RAY_ADDRESS")
        local = {} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False}
        ray.init(address=address or "local", logging_level="WARNING", **local)
    timings = {}
    started = time.monotonic()
    for config_file, count, name in (
        ("configs/generate_demo.yaml", args.images, "pretrain"),
        ("configs/generate_demo_videos.yaml", args.videos, "finetune"),
    ):
        overrides = [f"source.procedural.count={count}", f"output.url={out / 'shards' / name}"]
        generate.run(load_config(generate.GenerateConfig, REPO / config_file, overrides))
    timings["generate_s"] = time.monotonic() - started

    common = [f"run.storage_path={out / 'runs'}", f"compute.num_workers={args.workers}", *tracking]
    started = time.monotonic()
    pretrained = run_training(
        load_config(
            PretrainConfig,
            REPO / "configs" / "pretrain_tiny.yaml",
            [
                *common,
                f"data.manifests=[{out / 'shards' / 'pretrain' / 'manifest.json'}]",
                f"train.epochs={args.pretrain_epochs}",
            ],
        )
    )
    timings["pretrain_s"] = time.monotonic() - started
    started = time.monotonic()
    finetuned = run_training(
        load_config(
            FinetuneConfig,
            REPO / "configs" / "finetune_tiny.yaml",
            [
                *common,
                f"init.model_uri={pretrained.checkpoint}",
                f"data.manifests=[{out / 'shards' / 'finetune' / 'manifest.json'}]",
                f"train.epochs={args.finetune_epochs}",
            ],
        )
    )
    timings["finetune_s"] = time.monotonic() - started
    timings["pretrain_loss"] = pretrained.metrics.get("loss")
    timings["finetune_loss"] = finetuned.metrics.get("loss")
    return pretrained.checkpoint, finetuned.checkpoint, timings


def evaluate_model(model: str, data: str, resolution: str, out: Path, tracking_uri: str) -> dict:
    config = EvaluateConfig(
        model=model,
        data=data,
        resolution=resolution,
        device="cpu",
        threads=1,  # one torch thread: steadier on a small shared CPU machine
        out=str(out),
        tracking={"uri": tracking_uri, "experiment": "vos-benchmark-learning"},
    )
    return scores.run(config)


def print_table(results: dict[str, dict[str, dict]]) -> None:
    """One row per evaluation set and predictor: J, F and J&F."""
    table = Table(title="Tiny gc trained through the pipelines vs copying the first mask")
    for column in ("evaluation set", "predictor", "J", "F", "J&F"):
        table.add_column(column, justify="right" if column in ("J", "F", "J&F") else "left")
    for data_set, reports in results.items():
        for predictor, report in reports.items():
            figures = (f"{report[key]:.3f}" for key in ("J_mean", "F_mean", "JF_mean"))
            table.add_row(data_set, predictor, *figures)
        table.add_section()
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    tracking = [f"tracking.uri={tracking_uri}", "tracking.experiment=vos-benchmark-learning"]

    if args.checkpoints:
        (pretrained, finetuned), timings = args.checkpoints, {}
    else:
        pretrained, finetuned, timings = train(args, out, tracking)
    data_sets = {
        "procedural (held out)": (held_out_videos(out, args.held_out), "original"),
        f"DAVIS ({args.resolution})": (args.davis, args.resolution),
    }
    results: dict[str, dict[str, dict]] = {}
    for index, (data_set, (data, resolution)) in enumerate(data_sets.items()):
        results[data_set] = {"copy first mask": first_mask_baseline(data)}
        for label, checkpoint in (("pretrained", pretrained), ("fine-tuned", finetuned)):
            work = out / f"eval-{index}-{label}"
            results[data_set][label] = evaluate_model(
                checkpoint, data, resolution, work, tracking_uri
            )
    print_table(results)

    arguments = argv if argv is not None else sys.argv[1:]
    result = {
        "benchmark": "learning",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/learning.py", *arguments]),
        "settings": {key: value for key, value in vars(args).items() if key not in ("json", "out")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "timings": timings,
        "results": {
            data_set: {
                predictor: {
                    key: report.get(key)
                    for key in ("J_mean", "F_mean", "JF_mean", "fps", "status", "sequences")
                }
                for predictor, report in reports.items()
            }
            for data_set, reports in results.items()
        },
    }
    path = Path(
        args.json or REPO / "benchmarks" / "out" / f"learning-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written {path}; work folder {out}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
