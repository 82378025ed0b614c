"""DAVIS-layout folders: the sequences of a set, and scoring folders of predicted masks
against its ground truth (every frame but the first and the last, sizes checked).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.progress import track

from core.cli import console
from core.masks import read_mask
from evaluation.metrics import SequenceScore, SequenceScorer, score_sequence


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


def copy_first_mask(
    davis_root: str | Path, sequences: Sequence[str] | None = None, resolution: str = "480p"
) -> list[SequenceScore]:
    """The baseline every model must beat: the first frame's mask predicted on every frame,
    scored like a model's predictions."""
    truth_root = annotation_folder(davis_root, resolution)
    scores = []
    for name in sequence_names(davis_root, sequences, resolution):
        masks = [read_mask(path) for path in sorted((truth_root / name).glob("*.png"))]
        scores.append(score_sequence(name, masks, [masks[0]] * len(masks)))
    return scores
