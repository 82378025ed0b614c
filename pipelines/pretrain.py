"""Pre-train a VOS model (gc, gvos_scm or stm) on synthetic clips with Ray Train.

    ray job submit --working-dir . -- python pipelines/pretrain.py --config configs/pretrain_gc.yaml
    python pipelines/pretrain.py --config configs/pretrain_tiny.yaml run.name=my-run train.epochs=2
    vos pretrain --config configs/pretrain_tiny.yaml

The same command runs on one CPU machine or many GPU nodes: workers, GPUs and storage come
from the config (see training/config.py). Rerunning with the same `run.name` resumes
from the run's newest readable checkpoint (a finished run is refused). What happens, step by step: training/driver.py.
"""

from __future__ import annotations

import argparse
import sys

from ray.train import TrainingFailedError

from core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, one_line, stage_parser
from core.config import ConfigError, load_config
from training.config import PretrainConfig
from training.driver import PreflightError, run_training


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "pretrain",
        __doc__,
        config_required=True,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = parser.parse_args(argv)
    try:
        run_training(
            load_config(PretrainConfig, args.config, args.overrides), config_file=args.config
        )
    except (ConfigError, PreflightError) as err:
        fail(None, err)  # each names what is wrong and where
        return EXIT_USAGE
    except TrainingFailedError as err:  # the workers' tracebacks are in the log above
        fail("pretrain", f"training failed: {one_line(err)[:2000]}")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
