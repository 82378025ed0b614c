"""`vos eval-masks`: score folders of predicted masks against DAVIS ground truth.

    vos eval-masks --pred PRED_ROOT --gt DAVIS_ROOT [--json OUT] [--sequences a,b]

`PRED_ROOT/<sequence>/<frame>.png` is compared with `DAVIS_ROOT/Annotations/480p/<sequence>/`
(0/255, grayscale-id and palette masks are all accepted). Every ground-truth frame except the
first and the last needs a prediction; a missing or extra frame, or a size mismatch, stops the
run with one line naming it. The per-sequence table is printed and, with `--json`, written as

    {"J_mean": ..., "F_mean": ..., "JF_mean": ..., "sequences": {name: {"J": ..., "F": ...}}}
"""

from __future__ import annotations

import argparse
import sys

from core.cli import EXIT_FAILED, EXIT_OK, console, fail
from core.masks import MaskError
from evaluation.folders import DavisLayoutError, score_folders
from evaluation.metrics import FrameError
from evaluation.report import json_report, results_table, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vos eval-masks",
        description="Score folders of predicted masks (PRED_ROOT/<sequence>/<frame>.png) against a "
        "DAVIS folder's Annotations/480p with the DAVIS J and F measures.",
    )
    parser.add_argument(
        "--pred",
        required=True,
        metavar="PRED_ROOT",
        help="folder of predictions, one sub-folder per sequence",
    )
    parser.add_argument(
        "--gt",
        required=True,
        metavar="DAVIS_ROOT",
        help="DAVIS root (holds Annotations/<resolution>/)",
    )
    parser.add_argument("--json", metavar="OUT", help="write the scores to this JSON file")
    parser.add_argument("--sequences", help="comma-separated sequence names (default: all in --gt)")
    parser.add_argument(
        "--resolution", default="480p", help="annotation resolution folder (default 480p)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sequences = [name.strip() for name in (args.sequences or "").split(",") if name.strip()] or None
    try:
        scores = score_folders(args.pred, args.gt, sequences, args.resolution)
    except (DavisLayoutError, FrameError, MaskError) as err:
        fail("eval-masks", err)
        return EXIT_FAILED
    console.print(results_table(scores))
    report = json_report(scores)
    if args.json:
        write_json(args.json, report)
        console.print(f"scores written to {args.json}", highlight=False)
    console.print(
        f"J&F {report['JF_mean']:.3f} (J {report['J_mean']:.3f}, F {report['F_mean']:.3f}) "
        f"over {len(scores)} sequences",
        highlight=False,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
