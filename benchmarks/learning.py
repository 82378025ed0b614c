"""Do the models learn the task? Tiny `gc` and `gvos_scm` trained on real data, on 2 CPU cores.

    python benchmarks/learning.py                       # both models, about 45 minutes
    python benchmarks/learning.py --models gc --json benchmarks/out/learning.json

The tiny CPU recipe, through the real stages, on a Ray started here (or RAY_ADDRESS) and an
MLflow store under the work folder (or MLFLOW_TRACKING_URI):

1. generate (one set each, shared by both models): synthetic clips from real images with
   several objects (`coco128-masks`, and frames of `davis2016-train` used as still images),
   each image scaled to the clip size (`clips.fit_source`: a crop shows about the whole
   frame, at the scale the model will see videos; `--background-regions N` also gives each
   image N regions of background as more objects, targets only their masks name: off by
   default, it cost `gvos_scm` 0.14 J&F on the development split); procedural scenes
   with look-alike, background-coloured and crossing distractors (style `distractors`),
   procedural videos of two look-alikes in lanes of their own (style `lookalike_lanes`),
   and windows of the `davis2016-train` videos;
2. pretrain each model on the image sets and the look-alike videos (Adam 3e-4, batch norm
   learning: at 1e-3 `gvos_scm` learns the saliency shortcut and ignores its mask), then
   fine-tune it on the DAVIS windows and the look-alike videos, 3 : 1 (a fresh 3-frame clip
   from every window each epoch, gaps growing with the curriculum); both stages warm up
   and decay their lr on a cosine (`train.lr_schedule`);
3. evaluate on `davis2016-sample` at 480p with the DAVIS protocol (every frame but the first
   and the last), at the model's own training size, beside copying the first mask; the
   models' memory keeps the given first frame at 3/4 of the global context
   (`first_frame_weight`, an inference rule the model records; the paper's plain mean let
   the tiny models drift off the object: 0.282 against 0.379 on the development split);
4. check that each model follows the object it is given (`evaluation.mask_dependence`): on
   held-out look-alike videos at the training scale, object A's mask must give A and B's
   mask B; and on DAVIS, moving the first mask sideways must move the prediction.

Training runs in fp32 by default; `--precision bf16` (or `auto`) trains under bf16
autocast where the CPU has bf16 kernels (AVX-512 BF16 / AMX), and `--key-coordinates` gives
the models' key/value heads each cell's position (`key_coordinates`): both are options not
yet chosen on the development split (benchmarks/RESULTS.md).

The recipe's choices were made on a development split of `davis2016-train` (24 sequences to
train, 6 held out: bear, boat, car-turn, hike, motocross-bumps, rhino; `--data` pointed at a
folder laid out like the shared one), never on the evaluation sequences.

The evaluation sequences are read only in steps 3 and 4. Prints a
table and writes JSON with the figures, per-sequence scores, training times, the distinct
clips each run saw, and `"models": {name: URI}` with `"tracking_uri"`, so that anyone can
segment other videos with the trained models (`vos segment --model URI ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from rich.table import Table

from core.cli import console
from core.config import load_config
from datagen import generate
from evaluation.folders import copy_first_mask
from evaluation.mask_dependence import follows_given_object, prediction_moves_with_mask
from evaluation.metrics import summarize
from evaluation.runner import EvaluateConfig
from registry import scores
from tracking.model_store import load_model
from training.config import FinetuneConfig, PretrainConfig
from training.driver import TrainingResult, run_training
from training.loop import bf16_runs_on

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOS_SHARED_DATA", REPO.parent / "shared" / "data"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gc", "gvos_scm"])
    parser.add_argument("--data", default=str(SHARED), help="the shared data folder")
    parser.add_argument("--size", type=int, default=96, help="clip size (px) of training")
    parser.add_argument("--clips-per-image", type=int, default=24, help="COCO clips per image")
    parser.add_argument(
        "--background-regions", type=int, default=0, help="moved masks added to each image"
    )
    parser.add_argument(
        "--fit-source",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale real images to the clip size (a crop shows the whole frame)",
    )
    parser.add_argument(
        "--lookalikes", type=int, default=1500, help="procedural look-alike scenes (0: none)"
    )
    parser.add_argument(
        "--lookalike-videos", type=int, default=300, help="procedural look-alike videos (0: none)"
    )
    parser.add_argument(
        "--first-frame-weight",
        type=float,
        default=0.75,
        help="share of the first frame in the GC memory at inference (0: the paper's mean)",
    )
    parser.add_argument(
        "--key-coordinates",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the key/value heads also read each cell's (x, y) (model option key_coordinates)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=900)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument(
        "--pretrain-lr", type=float, default=3e-4, help="fine-tuning: configs/finetune_tiny.yaml"
    )
    parser.add_argument("--warmup-steps", type=int, default=30, help="of each stage's cosine lr")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="of training (auto: bf16 where this CPU has bf16 kernels, AVX-512 BF16 or AMX)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "learning"))
    parser.add_argument("--json", default=None, help="output JSON path")
    args = parser.parse_args(argv)
    missing = [
        name
        for name in ("coco128-masks", "davis2016-train", "davis2016-sample")
        if not (Path(args.data) / name).is_dir()
    ]
    if not 0 <= args.first_frame_weight <= 1:
        parser.error(f"--first-frame-weight must be in [0, 1], got {args.first_frame_weight}")
    if missing:
        parser.error(f"{args.data} lacks {', '.join(missing)} (see ../shared/data/README.md)")
    if args.precision == "auto":
        args.precision = "bf16" if bf16_runs_on(torch.device("cpu")) else "fp32"
    return args


PRETRAIN_SETS = ("coco", "davis-frames", "look-alikes", "look-alike-videos")  # equal weights
FINETUNE_SETS = {"davis-videos": 3.0, "look-alike-videos": 1.0}  # set: weight


# -- 1. the training data ---------------------------------------------------------------------


def shard_sets(args: argparse.Namespace, out: Path) -> dict[str, str]:
    """Generate the five sets; returns their manifest URLs by name."""
    data, size = Path(args.data), args.size
    image_clips = [f"clips.size={size}", "clips.clips_per_shard=64"]
    real_images = [
        *image_clips,
        f"clips.background_regions={args.background_regions}",
        f"clips.fit_source={str(args.fit_source).lower()}",
    ]
    sets = {
        "coco": ("generate_images.yaml", [
            "source.kind=images", f"source.path={data / 'coco128-masks'}",
            "source.image_dir=images", "source.mask_dir=masks",
            f"clips.clips_per_source={args.clips_per_image}", *real_images,
        ]),
        "davis-frames": ("generate_images.yaml", [
            "source.kind=images", f"source.path={data / 'davis2016-train'}",
            "source.image_dir=JPEGImages/240p", "source.mask_dir=Annotations/240p",
            f"clips.clips_per_source={max(1, args.clips_per_image // 12)}", *real_images,
        ]),
        "look-alikes": ("generate_demo.yaml", [
            f"source.procedural.count={args.lookalikes}", "source.procedural.num_objects=3",
            "source.procedural.style=distractors",
            "source.procedural.width=160", "source.procedural.height=120",
            *image_clips,
        ]),
        "look-alike-videos": ("generate_demo_videos.yaml", [
            f"source.procedural.count={args.lookalike_videos}", "source.procedural.num_objects=2",
            "source.procedural.style=lookalike_lanes", "source.procedural.frames=16",
            f"source.procedural.width={size * 4 // 3}", f"source.procedural.height={size}",
            f"clips.size={size}", "clips.max_skip=4", "clips.clips_per_shard=16",
        ]),
        "davis-videos": ("generate_videos.yaml", [
            "source.kind=davis", f"source.path={data / 'davis2016-train'}",
            "source.resolution=240p", f"clips.size={size}", "clips.max_skip=10",
            "clips.clips_per_shard=16",
        ]),
    }  # fmt: skip
    if not args.lookalikes:
        del sets["look-alikes"]
    if not args.lookalike_videos:
        del sets["look-alike-videos"]
    manifests = {}
    for name, (config_file, overrides) in sets.items():
        config = load_config(
            generate.GenerateConfig,
            REPO / "configs" / config_file,
            [*overrides, f"output.url={out / 'shards' / name}", "output.split=null"],
        )
        manifests[name] = generate.run(config)["manifest"]
    return manifests


# -- 2. training ---------------------------------------------------------------------------------


def first_frame_weight(model: str, args: argparse.Namespace) -> list[str]:
    """The GC memory rule the trained model records for inference (training never reads it)."""
    if model == "stm" or not args.first_frame_weight:
        return []
    return [f"model.options.first_frame_weight={args.first_frame_weight}"]


def train(
    model: str, args: argparse.Namespace, manifests: dict[str, str], out: Path, tracking: list
) -> tuple[TrainingResult, TrainingResult]:
    """Pretrain on the image sets and the look-alike videos, then fine-tune on the DAVIS
    windows and the look-alike videos."""
    common = [
        f"model.name={model}",
        f"run.storage_path={out / 'runs'}",
        f"compute.num_workers={args.workers}",
        "data.loader_workers=1",
        f"compute.precision={args.precision}",
        f"run.checkpoint_every_steps={args.checkpoint_every}",
        *tracking,
    ]
    schedule = ["train.lr_schedule=cosine", f"train.warmup_steps={args.warmup_steps}"]
    pretrain_sets = [manifests[name] for name in PRETRAIN_SETS if name in manifests]
    finetune_sets = [manifests[name] for name in FINETUNE_SETS if name in manifests]
    finetune_weights = [FINETUNE_SETS[name] for name in FINETUNE_SETS if name in manifests]
    pretrained = run_training(
        load_config(
            PretrainConfig,
            REPO / "configs" / "pretrain_tiny.yaml",
            [
                *common,
                f"run.name=learning-{model}-pretrain-{out.name}",
                f"data.manifests=[{','.join(pretrain_sets)}]",
                f"data.weights=[{','.join(['1.0'] * len(pretrain_sets))}]",
                *first_frame_weight(model, args),
                f"model.options.key_coordinates={str(args.key_coordinates).lower()}",
                "train.epochs=1000",
                f"train.max_steps={args.pretrain_steps}",
                f"train.lr={args.pretrain_lr}",
                *schedule,
            ],
        )
    )
    finetuned = run_training(
        load_config(
            FinetuneConfig,
            REPO / "configs" / "finetune_tiny.yaml",
            [
                *common,
                f"run.name=learning-{model}-finetune-{out.name}",
                f"init.model_uri={pretrained.checkpoint}",
                f"data.manifests=[{','.join(finetune_sets)}]",
                f"data.weights=[{','.join(str(weight) for weight in finetune_weights)}]",
                "train.epochs=1000",
                f"train.max_steps={args.finetune_steps}",
                *schedule,
            ],
        )
    )
    return pretrained, finetuned


# -- 3. evaluation --------------------------------------------------------------------------------


def evaluate(model_uri: str, davis: str, out: Path, tracking_uri: str) -> dict:
    config = EvaluateConfig(
        model=model_uri,
        data=davis,
        resolution="model",
        device="cpu",
        out=str(out),
        tracking={"uri": tracking_uri, "experiment": "vos-benchmark-learning"},
    )
    return scores.run(config)


# -- the report -----------------------------------------------------------------------------------


def print_table(baseline: dict, results: dict[str, dict]) -> None:
    table = Table(title="DAVIS 2016 sample (480p): tiny models trained on 2 CPU cores")
    for column in ("predictor", "J&F", "J", "F", "follows A / B", "mask shift moves it"):
        table.add_column(column)
    table.add_row(
        "copy the first mask",
        *(f"{baseline[k]:.3f}" for k in ("JF_mean", "J_mean", "F_mean")),
        "-",
        "-",
    )
    for model, result in results.items():
        davis, check = result["davis"], result["mask_dependence"]
        table.add_row(
            f"tiny {model}",
            *(f"{davis[k]:.3f}" for k in ("JF_mean", "J_mean", "F_mean")),
            f"J {check['J_A']:.2f} / {check['J_B']:.2f} ({'pass' if check['passed'] else 'FAIL'})",
            f"IoU {result['mask_shift']['iou']:.2f} ({'yes' if result['mask_shift']['moved'] else 'NO'})",
        )  # fmt: skip
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    tracking = [f"tracking.uri={tracking_uri}", "tracking.experiment=vos-benchmark-learning"]
    davis = str(Path(args.data) / "davis2016-sample")

    manifests = shard_sets(args, out)
    timings = {"generate_s": round(time.monotonic() - started, 1)}
    results = {}
    for model in args.models:
        pretrained, finetuned = train(model, args, manifests, out, tracking)
        net = load_model(finetuned.checkpoint)
        results[model] = {
            "model_uri": finetuned.model_uri,
            "pretrain_s": round(pretrained.seconds, 1),
            "finetune_s": round(finetuned.seconds, 1),
            "distinct_clips": {
                "pretrain": pretrained.metrics.get("distinct_clips"),
                "finetune": finetuned.metrics.get("distinct_clips"),
            },
            "davis": evaluate(finetuned.model_uri, davis, out / f"eval-{model}", tracking_uri),
            "mask_dependence": follows_given_object(net, size=(args.size * 4 // 3, args.size)),
            "mask_shift": prediction_moves_with_mask(net, davis),
        }
    baseline = summarize(copy_first_mask(davis))
    print_table(baseline, results)

    arguments = argv if argv is not None else sys.argv[1:]
    report = {
        "benchmark": "learning",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/learning.py", *arguments]),
        "settings": {key: value for key, value in vars(args).items() if key not in ("json", "out")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "minutes": round((time.monotonic() - started) / 60, 1),
        "timings": timings,
        "copy_first_mask": {key: baseline[key] for key in ("J_mean", "F_mean", "JF_mean")},
        "results": {
            model: {
                **{key: value for key, value in result.items() if key != "davis"},
                "davis": {
                    key: result["davis"].get(key)
                    for key in ("J_mean", "F_mean", "JF_mean", "fps", "status", "sequences")
                },
            }
            for model, result in results.items()
        },
        "models": {model: result["model_uri"] for model, result in results.items()},
        "tracking_uri": tracking_uri,
    }
    path = Path(args.json or out / "learning.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"written {path}; work folder {out}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
