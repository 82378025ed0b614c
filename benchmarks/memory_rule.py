"""How much of the GC memory should the given first frame keep? Re-score trained models.

    python benchmarks/memory_rule.py --learning-json benchmarks/out/learning.json \
        --data <DAVIS root> --weights paper 0.25 0.5 0.75 1.0

For each model of a `benchmarks/learning.py` run (its `"models"` and `"tracking_uri"`),
segments every sequence of a DAVIS-layout folder under each first-frame weight w of the
global context (`first_frame_weight`: G_t = w C_0 + (1 - w) mean(C_1 .. C_t); `paper` is the
GC paper's plain mean over all frames) and scores J&F with the DAVIS protocol, at the
model's training size; with `--mask-checks` also `benchmarks/learning.py`'s two checks
that the model follows the object it is given. Training never reads the rule, so no model
is retrained. Choose w on a development split (`--data` pointed at held-out training
sequences), never on the evaluation set. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlflow
from rich.table import Table

from core.cli import console
from evaluation.mask_dependence import follows_given_object, prediction_moves_with_mask
from evaluation.metrics import summarize
from evaluation.runner import EvaluationSettings, evaluate_sequence, sequence_files
from tracking.model_store import load_model


def parse_weight(text: str) -> float | None:
    if text == "paper":
        return None
    weight = float(text)
    if not 0 < weight <= 1:
        raise argparse.ArgumentTypeError(f"a weight is 'paper' or in (0, 1], got {text}")
    return weight


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learning-json", required=True, help="a benchmarks/learning.py JSON")
    parser.add_argument("--data", required=True, help="DAVIS root to score on")
    parser.add_argument("--weights", nargs="+", type=parse_weight, default=[None, 0.5, 0.75])
    parser.add_argument(
        "--mask-checks",
        action="store_true",
        help="also run benchmarks/learning.py's two mask-dependence checks under each weight",
    )
    parser.add_argument("--json", default=None, help="output JSON path")
    return parser.parse_args(argv)


def score(net, files, weight: float | None, data: str, mask_checks: bool) -> dict:
    """J&F overall and per sequence with the memory rule `weight` (and the mask checks)."""
    net.record_first_frame_weight(weight)
    with tempfile.TemporaryDirectory() as masks:
        outcomes = [evaluate_sequence(net, sequence, "model", "cpu", masks) for sequence in files]
    failed = [f"{o.name}: {o.error}" for o in outcomes if o.score is None]
    if failed:
        raise RuntimeError("; ".join(failed))
    summary = summarize([o.score for o in outcomes])
    result = {
        **{key: summary[key] for key in ("JF_mean", "J_mean", "F_mean")},
        "sequences": {o.name: o.score.jf_mean for o in outcomes},
    }
    if mask_checks:
        size = net.config["train_size"]
        result["mask_dependence"] = follows_given_object(net, size=(size * 4 // 3, size))
        result["mask_shift"] = prediction_moves_with_mask(net, data)
    return result


def describe(result: dict) -> str:
    text = f"{result['JF_mean']:.3f}"
    if "mask_dependence" in result:
        check, shift = result["mask_dependence"], result["mask_shift"]
        text += (
            f"\nA / B {check['J_A']:.2f} / {check['J_B']:.2f} ({'pass' if check['passed'] else 'FAIL'})"
            f"\nshift IoU {shift['iou']:.2f} ({'moves' if shift['moved'] else 'NO'})"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    learning = json.loads(Path(args.learning_json).read_text())
    mlflow.set_tracking_uri(learning["tracking_uri"])
    files = sequence_files(EvaluationSettings(data=args.data))
    table = Table(title=f"J&F on {args.data} by the first frame's share of the GC memory")
    table.add_column("model")
    for weight in args.weights:
        table.add_column("paper (1/t)" if weight is None else f"w = {weight:g}")
    results = {}
    for model, uri in learning["models"].items():
        net = load_model(uri)
        if not hasattr(net, "record_first_frame_weight"):
            console.print(f"skipped {model}: it has no GC memory", highlight=False)
            continue
        results[model] = {
            "model_uri": uri,
            "by_weight": {
                str(w or "paper"): score(net, files, w, args.data, args.mask_checks)
                for w in args.weights
            },
        }
        table.add_row(model, *(describe(s) for s in results[model]["by_weight"].values()))
    console.print(table)
    report = {
        "benchmark": "memory_rule",
        "date": time.strftime("%Y-%m-%d"),
        "learning_json": args.learning_json,
        "data": args.data,
        "results": results,
    }
    path = Path(args.json or Path(args.learning_json).with_suffix(".memory_rule.json"))
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written {path}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
