"""Evaluation reports: the J&F table, the speed table, the JSON report and its atomic write."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.table import Table

from evaluation.metrics import SequenceScore, summarize


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
