"""Fine-tune a VOS model (gc, gvos_scm or stm) on video clips with Ray Train.

    ray job submit --working-dir . -- python pipelines/finetune.py --config configs/finetune_gc.yaml
    python pipelines/finetune.py --config configs/finetune_tiny.yaml init.model_uri=runs:/<run id>/model
    vos finetune --config configs/finetune_tiny.yaml

It starts from `init.model_uri` (a registered model such as models:/gc-vos@champion,
runs:/<id>/model, a checkpoint folder or a .pt file) and grows the largest gap between the
sampled frames every few epochs (`curriculum`). The same command runs on one CPU machine or
many GPU nodes: workers, GPUs and storage come from the config (training/config.py).
Rerunning with the same `run.name` resumes from the run's last checkpoint. What happens, step by step: training/driver.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config
from training.config import FinetuneConfig
from training.driver import TrainingResult, main_for, run_training

__all__ = ["main", "run"]


def run(config: FinetuneConfig | str | Path, config_file: str | None = None) -> TrainingResult:
    """Fine-tune from a validated config (or a config file); returns the run's outcome."""
    if not isinstance(config, FinetuneConfig):
        config_file = str(config)
        config = load_config(FinetuneConfig, config)
    return run_training(config, config_file=config_file)


def main(argv: list[str] | None = None) -> int:
    return main_for(FinetuneConfig, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
