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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich import box
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pipelines.davis_metrics import FrameError, SequenceScore, SequenceScorer, summarize
from pipelines.masks_io import MaskError, read_mask

__all__ = [
    "DavisLayoutError",
    "annotation_folder",
    "json_report",
    "main",
    "results_table",
    "score_folders",
    "sequence_names",
    "write_json",
]

console = Console()


class DavisLayoutError(ValueError):
    """Prediction or ground-truth folders that do not line up; the message names what is off."""


def annotation_folder(davis_root: str | Path, resolution: str = "480p") -> Path:
    folder = Path(davis_root) / "Annotations" / resolution
    if not folder.is_dir():
        raise DavisLayoutError(f"{davis_root}: not a DAVIS folder (no Annotations/{resolution}/)")
    return folder


def sequence_names(
    davis_root: str | Path, wanted: Sequence[str] | None = None, resolution: str = "480p"
) -> list[str]:
    """The sequences of a DAVIS folder (all, or `wanted`, which must all exist), sorted."""
    available = sorted(
        path.name for path in annotation_folder(davis_root, resolution).iterdir() if path.is_dir()
    )
    if not wanted:
        if not available:
            raise DavisLayoutError(f"{davis_root}: no sequences under Annotations/{resolution}/")
        return available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise DavisLayoutError(f"{davis_root}: no ground truth for sequence {unknown[0]!r}")
    return list(wanted)


def _stems(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.glob("*.png"))}


def _check_frames(
    sequence: str, truth: dict[str, Path], predicted: dict[str, Path], folder: Path
) -> None:
    frames = list(truth)
    scored = frames[1:-1]
    missing = [frame for frame in scored if frame not in predicted]
    extra = [frame for frame in predicted if frame not in truth]
    for problem, names in (("missing predicted mask", missing), ("extra predicted mask", extra)):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise DavisLayoutError(f"{sequence}: {problem} {names[0]}.png{more} in {folder}")


def score_folder(sequence: str, truth_folder: Path, prediction_folder: Path) -> SequenceScore:
    """Score one sequence's folder of predicted masks against its ground-truth folder."""
    if not prediction_folder.is_dir():
        raise DavisLayoutError(f"{sequence}: no predictions (missing folder {prediction_folder})")
    truth_paths, predicted_paths = _stems(truth_folder), _stems(prediction_folder)
    if not truth_paths:
        raise DavisLayoutError(f"{sequence}: no ground-truth masks in {truth_folder}")
    _check_frames(sequence, truth_paths, predicted_paths, prediction_folder)

    first_truth = read_mask(next(iter(truth_paths.values())))
    if first_truth.max() == 0:
        raise DavisLayoutError(f"{sequence}: the first ground-truth mask has no object")
    scorer = SequenceScorer(sequence, len(truth_paths), first_truth)
    for frame, truth_path in truth_paths.items():
        truth = read_mask(truth_path)
        # the first and last frames are not scored: where no prediction exists, any mask will do
        prediction = read_mask(predicted_paths[frame]) if frame in predicted_paths else truth
        scorer.add(frame, truth, prediction)
    return scorer.score()


def score_folders(
    prediction_root: str | Path,
    davis_root: str | Path,
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
) -> list[SequenceScore]:
    """Score `prediction_root/<sequence>/` for each sequence of the DAVIS folder (or `sequences`)."""
    prediction_root, truth_root = Path(prediction_root), annotation_folder(davis_root, resolution)
    if not prediction_root.is_dir():
        raise DavisLayoutError(f"{prediction_root}: prediction folder not found")
    names = sequence_names(davis_root, sequences, resolution)
    if not sequences:
        extra = sorted(
            path.name
            for path in prediction_root.iterdir()
            if path.is_dir() and path.name not in names
        )
        if extra:
            raise DavisLayoutError(
                f"{extra[0]}: predictions for a sequence with no ground truth in {truth_root}"
            )
    return [
        score_folder(name, truth_root / name, prediction_root / name)
        for name in track(names, description="scoring sequences", console=console, transient=True)
    ]


def json_report(scores: Sequence[SequenceScore]) -> dict:
    """The eval-masks JSON: J_mean, F_mean, JF_mean and per-sequence J and F."""
    summary = summarize(scores)
    return {key: summary[key] for key in ("J_mean", "F_mean", "JF_mean", "sequences")}


def results_table(
    scores: Sequence[SequenceScore],
    title: str = "DAVIS semi-supervised evaluation",
) -> Table:
    """Per sequence: J and F (mean, recall, decay; averaged over its objects) and J&F, then the
    totals over all objects."""
    summary = summarize(scores)
    table = Table(
        title=title,
        caption="rec: recall, dec: decay; first and last frames not scored",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("sequence", no_wrap=True)
    for column in ("obj", "frames", "J", "J rec", "J dec", "F", "F rec", "F dec", "J&F"):
        table.add_column(column, justify="right", no_wrap=True)
    for score in scores:
        figures = [*score.j_stats, *score.f_stats, score.jf_mean]
        table.add_row(
            score.name,
            str(len(score.objects)),
            str(len(score.objects[0].frames)),
            *(f"{value:.3f}" for value in figures),
        )
    table.add_section()
    totals = [
        summary[key]
        for key in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean")
    ]
    table.add_row(
        "[bold]all[/bold]",
        str(sum(len(score.objects) for score in scores)),
        "",
        *(f"[bold]{value:.3f}[/bold]" for value in totals),
    )
    return table


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


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
    sequences = (
        [name.strip() for name in args.sequences.split(",") if name.strip()]
        if args.sequences
        else None
    )
    try:
        scores = score_folders(args.pred, args.gt, sequences, args.resolution)
    except (DavisLayoutError, FrameError, MaskError) as err:
        console.print(f"[red]eval-masks: {err}[/red]", soft_wrap=True, highlight=False)
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
