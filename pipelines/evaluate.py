"""`vos evaluate`: score a model on DAVIS-layout sequences (J&F, speed, memory) and record it.

    vos evaluate --model models:/gc-vos@challenger --data DAVIS_ROOT [--config FILE] [key=value ...]

Every sequence (`DAVIS_ROOT/JPEGImages/480p/<seq>/`, ground truth in `Annotations/480p/`) goes
through the model's streaming `VideoSegmenter` from its first-frame mask, at the configured
`resolution` (`model`, the default: the size the model was trained at; `original`, `<N>p`
or a scale); the masks are
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

import json
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from core import storage
from core.cli import EXIT_FAILED, EXIT_OK, fail, overrides_with_flags, stage_parser
from core.config import ConfigError, load_config
from evaluation.folders import DavisLayoutError
from evaluation.runner import EvaluateConfig
from registry.scores import run
from registry.versions import RegistryError


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "vos evaluate",
        "Segment every sequence of a DAVIS-layout folder with a model, score J&F, measure "
        "speed and memory, and record the report in MLflow.",
    )
    parser.add_argument(
        "--model", help="models:/gc-vos@champion, runs:/<id>/model, a checkpoint or .pt"
    )
    parser.add_argument("--data", help="DAVIS root: a folder or an s3:// URL")
    parser.add_argument("--json", help="also write the report to this local JSON file")
    args = parser.parse_args(argv)
    overrides = overrides_with_flags(args.overrides, {"model": args.model, "data": args.data})
    try:
        report = run(load_config(EvaluateConfig, args.config, overrides))
    except (ConfigError, DavisLayoutError, RegistryError, storage.StorageError, ValueError) as err:
        fail("evaluate", err)
        return EXIT_FAILED
    except MlflowException as err:
        fail("evaluate", f"MLflow: {err.message.splitlines()[0]}")
        return EXIT_FAILED
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["status"] == "complete" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
