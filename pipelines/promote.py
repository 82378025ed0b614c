"""`vos promote`: register a candidate model version and gate the `champion` alias.

    vos promote --run-id RUN_ID                  register the run's model (it becomes `challenger`)
    vos promote --model gc-vos                   decide on the current `challenger`
    vos promote --model gc-vos --version 7 --force --reason "hotfix for customer X"

The gate. A candidate takes `champion` when

    its evaluation is complete, and either no champion exists yet (the first version), or
    the champion's evaluation is complete, on the same evaluation set (same fingerprint), and
    J&F(candidate) - J&F(champion) > margin.

A failed or partial evaluation never promotes and never demotes. `--force` skips the gate
and needs a `--reason`. Every decision (outcome, why, who, when, both scores, the margin and
the evaluation-set fingerprint) is written on the candidate version as `promotion.*` tags,
and appended to its `promotion.history`. With an `evaluation:` section in the config, a
version lacking a complete evaluation on that set is evaluated first (pipelines/evaluate.py).
"""

from __future__ import annotations

import sys

from mlflow.exceptions import MlflowException

from core.cli import EXIT_FAILED, EXIT_OK, console, fail, overrides_with_flags, stage_parser
from core.config import ConfigError, load_config
from core.storage import StorageError
from evaluation.folders import DavisLayoutError
from registry.promotion import PromoteConfig, run
from registry.versions import RegistryError


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "vos promote",
        "Register a model version and give it the champion alias when its J&F beats the "
        "champion's on the same evaluation set by the configured margin.",
    )
    parser.add_argument("--model", help="architecture or registered model name")
    parser.add_argument("--run-id", help="register this training run's model first")
    parser.add_argument("--version", help="the candidate version (default: the challenger)")
    parser.add_argument("--margin", type=float, help="J&F margin (0..1)")
    parser.add_argument("--force", action="store_true", help="promote without the gate")
    parser.add_argument("--reason", help="why (required with --force)")
    args = parser.parse_args(argv)
    flags = {
        "model": args.model,
        "run_id": args.run_id,
        "version": args.version,
        "reason": args.reason,
        "margin": args.margin,
        "force": args.force or None,
    }
    try:
        decision = run(
            load_config(PromoteConfig, args.config, overrides_with_flags(args.overrides, flags))
        )
    except (ConfigError, RegistryError, DavisLayoutError, StorageError) as err:
        fail("promote", err)
        return EXIT_FAILED
    except MlflowException as err:
        fail("promote", f"MLflow: {err.message.splitlines()[0]}")
        return EXIT_FAILED
    colour = "green" if decision.moves_champion else "yellow"
    console.print(
        f"[{colour}]{decision.outcome}[/{colour}]: version {decision.version} "
        f"(champion before: {decision.champion_version or 'none'}): {decision.reason}",
        soft_wrap=True,
        highlight=False,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
