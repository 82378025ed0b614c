"""What every stage's command line shares: `--config FILE` plus `key=value` overrides, flags
turned into overrides, one console, one-line errors and the exit codes.

Exit codes: 0 done, 1 the work failed (a bad model, data or server: one line says which),
2 the command itself is wrong (a bad config value, a missing flag).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one problem, one line: never wrapped

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def stage_parser(prog: str, description: str, config_required: bool = False, **kwargs):
    """An argument parser with the `--config FILE` option and the `key=value` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    parser.add_argument("--config", required=config_required, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
    return parser


def overrides_with_flags(overrides: list[str], flags: Mapping[str, Any]) -> list[str]:
    """`overrides` followed by `key=value` for each flag given; values are JSON-quoted so that
    YAML reads paths, URIs and version numbers as the strings they are."""
    given = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return [*overrides, *given]


def one_line(err: BaseException) -> str:
    """The exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    return text or type(err).__name__


def fail(stage: str | None, err: BaseException | str) -> None:
    """Print what went wrong in red on standard error: `stage: problem` on one line, or, with
    no stage, the error's own lines (a config error names its file and one value per line)."""
    if isinstance(err, str):
        lines = [err]
    elif stage is None:
        lines = str(err).strip().splitlines() or [type(err).__name__]
    else:
        lines = [one_line(err)]
    for line in lines:
        text = f"{stage}: {line}" if stage else line
        errors.print(f"[red]{escape(text)}[/red]", highlight=False)


def progress_bar() -> Progress:
    """The progress bar long work shows: what, a bar, done/total, elapsed and remaining."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=True)


def utc_timestamp(seconds: float | None = None) -> str:
    """ISO 8601 in UTC, to the second (2026-12-01T21:45:00Z): what decisions and tags record."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
