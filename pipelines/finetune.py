"""Fine-tune a VOS model (gc, gvos_scm or stm) on video clips with Ray Train.

    ray job submit --working-dir . -- python pipelines/finetune.py --config configs/finetune_gc.yaml
    python pipelines/finetune.py --config configs/finetune_tiny.yaml init.model_uri=runs:/<run id>/model
    vos finetune --config configs/finetune_tiny.yaml

It starts from `init.model_uri` (a registered model such as models:/gc-vos@champion,
runs:/<id>/model, a checkpoint folder or a .pt file) and grows the largest gap between the
sampled frames every few epochs (`curriculum`). The same command runs on one CPU machine or
many GPU nodes: workers, GPUs and storage come from the config (training/config.py).
Rerunning with the same `run.name` resumes from the run's newest readable
checkpoint (a finished run is refused). What happens, step by step: training/driver.py.
"""

from __future__ import annotations

import argparse
import sys

from ray.train import TrainingFailedError

from core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, one_line, stage_parser
from core.config import ConfigError, load_config
from training.config import FinetuneConfig
from training.driver import PreflightError, run_training


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "finetune",
        __doc__,
        config_required=True,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = parser.parse_args(argv)
    try:
        run_training(
            load_config(FinetuneConfig, args.config, args.overrides), config_file=args.config
        )
    except (ConfigError, PreflightError) as err:
        fail(None, err)  # each names what is wrong and where
        return EXIT_USAGE
    except TrainingFailedError as err:  # the workers' tracebacks are in the log above
        fail("finetune", f"training failed: {one_line(err)[:2000]}")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
