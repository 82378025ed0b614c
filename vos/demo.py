"""`vos demo`: the whole pipeline end to end on tiny settings, in minutes on 2 CPU cores.

    1. bring up the local stack (or use the one the environment names)
    2. write procedural images and videos (and a procedural evaluation set) to disk
    3. generate WebDataset shards from them (a Ray job's tasks)
    4. `ray job submit` pretraining, then fine-tuning from the pretrained model
    5. register the fine-tuned model, evaluate it, promote it through the gate
    6. evaluate on the DAVIS sample too, when it is present
    7. segment one sequence with the champion: masks and an overlay GIF
    8. print where to look

Shards and training runs go to `--storage` (a local folder by default, or `s3://...`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from rich.panel import Panel
from rich.table import Table

from core import cluster, storage
from core.cli import console
from core.config import load_config
from datagen import generate
from datagen.procedural import write_procedural_images, write_procedural_videos
from evaluation import segment
from evaluation.folders import copy_first_mask
from evaluation.runner import EvaluateConfig, EvaluationSettings
from registry import promotion, scores, versions
from tracking import runs
from vos.stack import DEFAULT_ROOT, LocalStack

REPO_ROOT = Path(__file__).resolve().parents[1]
DAVIS_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "davis2016-sample"
FRAME_SIZE = (160, 120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vos demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default=".vos/demo", help="local data and outputs (default %(default)s)"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="shards and runs: a folder or s3:// URL (default: WORKDIR/storage)",
    )
    parser.add_argument("--model", default="gc", choices=["gc", "gvos_scm", "stm"])
    parser.add_argument(
        "--davis", default=str(DAVIS_SAMPLE), help="a DAVIS root to evaluate on, if present"
    )
    parser.add_argument("--quick", action="store_true", help="fewer clips and steps (for tests)")
    return parser.parse_args(argv)


def ensure_stack() -> None:
    """Use the Ray cluster and MLflow server the environment names, else the local stack."""
    if os.environ.get("RAY_API_SERVER_ADDRESS") and os.environ.get("MLFLOW_TRACKING_URI"):
        return
    stack = LocalStack(os.environ.get("VOS_STACK_ROOT", DEFAULT_ROOT))
    with console.status("starting the local stack (Ray head, MLflow server)..."):
        state = stack.up()
    for key, value in stack.client_env(state).items():
        os.environ[key] = value


def write_sources(workdir: Path, quick: bool) -> dict[str, Path]:
    """Procedural images (pretraining), videos (fine-tuning) and an evaluation set on disk."""
    images, videos, eval_set = (
        workdir / "data" / "images",
        workdir / "data" / "videos",
        workdir / "data" / "eval",
    )
    with console.status("writing procedural images and videos..."):
        write_procedural_images(images, n=48 if quick else 200, seed=0, size=FRAME_SIZE)
        write_procedural_videos(
            videos, n_sequences=6 if quick else 24, n_frames=16, seed=1, size=FRAME_SIZE
        )
        write_procedural_videos(
            eval_set,
            n_sequences=2 if quick else 3,
            n_frames=12 if quick else 24,
            seed=2,
            size=FRAME_SIZE,
        )
    return {"images": images, "videos": videos, "eval": eval_set}


def make_shards(paths: dict[str, Path], storage_url: str) -> dict[str, str]:
    manifests = {}
    jobs = {
        "pretrain": ("configs/generate_demo.yaml", ["source.kind=images", f"source.path={paths['images']}",
                                                    "source.image_dir=images", "source.mask_dir=masks"]),
        "finetune": ("configs/generate_demo_videos.yaml", ["source.kind=davis", f"source.path={paths['videos']}"]),
    }  # fmt: skip
    for split, (config_file, overrides) in jobs.items():
        console.rule(f"generate: {split} shards")
        output = storage.join(storage_url, "shards", split)
        config = load_config(
            generate.GenerateConfig, REPO_ROOT / config_file, [*overrides, f"output.url={output}"]
        )
        manifests[split] = generate.run(config)["manifest"]
    return manifests


def submit(stage: str, config_file: str, overrides: list[str]) -> None:
    """`ray job submit --working-dir . -- python pipelines/<stage>.py ...`, as a user types it,
    with the commit of this checkout (VOS_GIT_COMMIT, VOS_GIT_DIRTY): the upload has no .git."""
    console.rule(f"ray job submit: {stage}")
    env_vars = {**cluster.forwarded_env(), **runs.git_env()}
    command = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--working-dir", ".",
        "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "python", f"pipelines/{stage}.py", "--config", config_file, *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(
            f"demo: the {stage} job failed (exit {result.returncode}); see its log above"
        )


def run_id_of(run_name: str) -> str:
    return runs.run_id_by_name(mlflow.get_tracking_uri(), run_name)


def train(manifests: dict[str, str], storage_url: str, model: str, quick: bool) -> str:
    """Pretrain, then fine-tune from it; returns the fine-tuning run's MLflow id."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_url = storage.join(storage_url, "runs")
    common = [f"model.name={model}", f"run.storage_path={runs_url}", "tracking.experiment=vos-demo"]
    if quick:
        common += [
            "train.epochs=1",
            "train.max_steps=6",
            "compute.num_workers=1",
            "data.loader_workers=0",
        ]
    pretrain_name = f"demo-pretrain-{stamp}"
    submit("pretrain", "configs/pretrain_tiny.yaml",
           [*common, f"run.name={pretrain_name}", f"data.manifests={json.dumps([manifests['pretrain']])}"])  # fmt: skip
    pretrain_run = run_id_of(pretrain_name)
    finetune_name = f"demo-finetune-{stamp}"
    submit("finetune", "configs/finetune_tiny.yaml",
           [*common, f"run.name={finetune_name}", f"init.model_uri=runs:/{pretrain_run}/model",
            f"data.manifests={json.dumps([manifests['finetune']])}"])  # fmt: skip
    return run_id_of(finetune_name)


def register_evaluate_promote(run_id: str, model: str, eval_set: Path, workdir: Path):
    """Register the run's model (challenger), evaluate it, and let the gate decide."""
    console.rule("register, evaluate, promote")
    name = versions.registered_name(model)
    version = versions.register_run_model(MlflowClient(), run_id, model=model).version
    settings = EvaluationSettings(
        data=str(eval_set), out=str(workdir / "eval" / "procedural"), device="cpu"
    )
    report = scores.run(EvaluateConfig(model=f"models:/{name}/{version}", **settings.model_dump()))
    decision = promotion.run(
        promotion.PromoteConfig(model=name, version=str(version), evaluation=settings)
    )
    return name, report, decision


def evaluate_on_davis(model_uri: str, davis: Path, workdir: Path, quick: bool) -> dict | None:
    """J&F on real DAVIS frames at a quarter of their size (the tiny models' scale)."""
    if not (davis / "JPEGImages").is_dir():
        console.print(f"(no DAVIS sample at {davis}: skipping that evaluation)")
        return None
    console.rule(f"evaluate on {davis.name}")
    sequences = sorted(path.name for path in (davis / "JPEGImages" / "480p").iterdir())
    config = EvaluateConfig(
        model=model_uri,
        data=str(davis),
        sequences=sequences[:1] if quick else sequences,
        resolution=0.25,
        device="cpu",
        out=str(workdir / "eval" / "davis"),
    )
    return scores.run(config)


def segment_one(model_uri: str, eval_set: Path, workdir: Path) -> segment.SegmentResult:
    console.rule("segment one sequence")
    sequence = sorted((eval_set / "JPEGImages" / "480p").iterdir())[0]
    first_mask = sorted((eval_set / "Annotations" / "480p" / sequence.name).iterdir())[0]
    out = workdir / "segment" / sequence.name
    return segment.run(
        segment.SegmentConfig(
            model=model_uri, frames=str(sequence), mask=str(first_mask), out=str(out),
            overlay=str(out.with_suffix(".gif")), device="cpu",
        )
    )  # fmt: skip


def print_summary(
    decision, report: dict | None, davis_report: dict | None, segmented, name: str, sets: dict
) -> None:
    """The J&F table, each sequence beside the copy-first-mask baseline, then where to look."""
    table = Table(
        title="J&F of the model, and of copying the first mask to every frame "
        "(procedural evaluation set" + (" and DAVIS sample)" if davis_report else ")")
    )
    for column in ("set", "sequence", "J", "F", "J&F", "copy first mask J&F"):
        table.add_column(column)
    for label, data in (("procedural", report), ("davis", davis_report)):
        if not data:
            continue
        baseline = {
            score.name: score.jf_mean
            for score in copy_first_mask(sets[label], list(data["sequences"]))
        }
        for sequence, row in data["sequences"].items():
            table.add_row(label, sequence, f"{row['J']:.3f}", f"{row['F']:.3f}",
                          f"{(row['J'] + row['F']) / 2:.3f}", f"{baseline[sequence]:.3f}")  # fmt: skip
        mean_baseline = sum(baseline.values()) / len(baseline)
        table.add_row(label, "[bold]mean[/bold]", f"{data['J_mean']:.3f}", f"{data['F_mean']:.3f}",
                      f"[bold]{data['JF_mean']:.3f}[/bold]", f"{mean_baseline:.3f}")  # fmt: skip
    console.print(table)
    lines = [
        f"MLflow UI:         {mlflow.get_tracking_uri()}",
        f"registered model:  {name} version {decision.version} ({decision.outcome}: {decision.reason})",
        f"champion:          models:/{name}@champion",
        f"masks:             {segmented.out}",
        f"overlay:           {segmented.overlay}",
    ]
    console.print(Panel("\n".join(lines), title="demo: where to look"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(args.workdir).resolve()
    storage_url = args.storage or str(workdir / "storage")
    ensure_stack()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    storage.check_storage(storage_url)

    paths = write_sources(workdir, args.quick)
    manifests = make_shards(paths, storage_url)
    run_id = train(manifests, storage_url, args.model, args.quick)
    name, report, decision = register_evaluate_promote(run_id, args.model, paths["eval"], workdir)
    davis_report = evaluate_on_davis(
        f"models:/{name}/{decision.version}", Path(args.davis), workdir, args.quick
    )
    segmented = segment_one(f"models:/{name}@champion", paths["eval"], workdir)
    sets = {"procedural": paths["eval"], "davis": Path(args.davis)}
    print_summary(decision, report, davis_report, segmented, name, sets)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
