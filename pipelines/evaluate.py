"""`vos evaluate`: score a model on DAVIS-layout sequences (J&F, speed, memory) and record it.

    vos evaluate --model models:/gc-vos@challenger --data DAVIS_ROOT [--config FILE] [key=value ...]

Every sequence (`DAVIS_ROOT/JPEGImages/480p/<seq>/`, ground truth in `Annotations/480p/`) goes
through the model's streaming `VideoSegmenter` from its first-frame mask, at the configured
`resolution` (`original`, `<N>p` or a scale: tiny models see small frames); the masks are
written at full size under `out` and scored with the DAVIS measures (evaluation/metrics.py).
Frames per second count the model's time only; peak memory is the peak RSS of the process
that ran the sequence (CPU) or `torch.cuda.max_memory_allocated` (GPU), plus the bytes held
in the segmenter's per-video memory. With `workers > 1` the sequences are spread over Ray
tasks (the data folder must then be readable at the same path on every node).

The report (JSON and a table) goes to `out`, and to MLflow: a run nested under the training
run that logged the model (else in `tracking.experiment`), with per-sequence scores and
overlays of the worst frames. The scores are set as `eval.*` tags on the model version (a
registry URI) and on the training run (so that a version registered from it carries them).
A sequence that fails makes the evaluation `partial` (all fail: `failed`); only a `complete`
evaluation can promote a model (pipelines/promote.py). Exit status: 0 only when complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.exceptions import MlflowException

from core import storage
from core.config import ConfigError, load_config
from evaluation.folders import DavisLayoutError
from evaluation.runner import EvaluateConfig, console
from registry.scores import run
from registry.versions import RegistryError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vos evaluate",
        description="Segment every sequence of a DAVIS-layout folder with a model, score J&F, "
        "measure speed and memory, and record the report in MLflow.",
    )
    parser.add_argument("--config", help="YAML config (see configs/evaluate_tiny.yaml)")
    parser.add_argument(
        "--model", help="models:/gc-vos@champion, runs:/<id>/model, a checkpoint or .pt"
    )
    parser.add_argument("--data", help="DAVIS root: a folder or an s3:// URL")
    parser.add_argument("--json", help="also write the report to this local JSON file")
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides (e.g. resolution=0.25)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {"model": args.model, "data": args.data}
    overrides = [
        *args.overrides,
        *(f"{key}={json.dumps(value)}" for key, value in flags.items() if value),
    ]
    try:
        config = load_config(EvaluateConfig, args.config, overrides)
        report = run(config)
    except (ConfigError, DavisLayoutError, RegistryError, storage.StorageError, ValueError) as err:
        console.print(f"[red]evaluate: {err}[/red]", soft_wrap=True, highlight=False)
        return 1
    except MlflowException as err:
        console.print(
            f"[red]evaluate: MLflow: {err.message.splitlines()[0]}[/red]", highlight=False
        )
        return 1
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
