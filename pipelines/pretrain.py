"""Pre-train a VOS model (gc, gvos_scm or stm) on synthetic clips with Ray Train.

    ray job submit --working-dir . -- python pipelines/pretrain.py --config configs/pretrain_gc.yaml
    python pipelines/pretrain.py --config configs/pretrain_tiny.yaml run.name=my-run train.epochs=2
    vos pretrain --config configs/pretrain_tiny.yaml

The same command runs on one CPU machine or many GPU nodes: workers, GPUs and storage come
from the config (see training/config.py). Rerunning with the same `run.name` resumes
from the run's last checkpoint. What happens, step by step: training/driver.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config
from training.config import PretrainConfig
from training.driver import TrainingResult, main_for, run_training

__all__ = ["main", "run"]


def run(config: PretrainConfig | str | Path, config_file: str | None = None) -> TrainingResult:
    """Pre-train from a validated config (or a config file); returns the run's outcome."""
    if not isinstance(config, PretrainConfig):
        config_file = str(config)
        config = load_config(PretrainConfig, config)
    return run_training(config, config_file=config_file)


def main(argv: list[str] | None = None) -> int:
    return main_for(PretrainConfig, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
