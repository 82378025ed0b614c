"""The training configs: every shipped file validates, and a bad value fails in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from training.config import FinetuneConfig, PretrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
MODELS = ("gc", "gvos_scm", "stm")


@pytest.mark.parametrize("model", MODELS)
def test_full_size_configs_follow_the_papers(model):
    pretrain = load_config(PretrainConfig, CONFIGS / f"pretrain_{model}.yaml")
    finetune = load_config(FinetuneConfig, CONFIGS / f"finetune_{model}.yaml")
    for config in (pretrain, finetune):
        assert config.model.name == model and config.model.size == "full"
        assert config.compute.use_gpu and config.compute.precision == "bf16"
        assert config.storage_path().startswith("s3://")
        assert all(url.startswith("s3://") for url in config.data.manifests)
    assert pretrain.train.lr == 1e-5
    assert finetune.init.model_uri == f"models:/{finetune.model.registered_name}@champion"
    if model == "gc":
        assert finetune.train.lr == 1e-6
        assert {finetune.max_skip(epoch) for epoch in range(50)} == {3}
    else:
        assert finetune.max_skip(0) == 5 and finetune.max_skip(1000) == 25


def test_tiny_configs_run_on_cpus():
    pretrain = load_config(PretrainConfig, CONFIGS / "pretrain_tiny.yaml")
    finetune = load_config(FinetuneConfig, CONFIGS / "finetune_tiny.yaml")
    for config in (pretrain, finetune):
        assert config.model.size == "tiny" and not config.compute.use_gpu
        assert config.compute.num_workers == 2


def test_curriculum_grows_every_n_epochs_up_to_its_limit():
    config = load_config(
        FinetuneConfig,
        CONFIGS / "finetune_tiny.yaml",
        [
            "curriculum.initial_max_skip=2",
            "curriculum.final_max_skip=9",
            "curriculum.grow_every_epochs=3",
            "curriculum.grow_by=3",
        ],
    )
    assert [config.max_skip(epoch) for epoch in range(10)] == [2, 2, 2, 5, 5, 5, 8, 8, 8, 9]


def test_run_names_are_unique_unless_given():
    config = load_config(PretrainConfig, CONFIGS / "pretrain_tiny.yaml")
    first, second = config.run_name(), config.run_name()
    assert first != second and first.startswith("pretrain-gc-")
    named = load_config(PretrainConfig, CONFIGS / "pretrain_tiny.yaml", ["run.name=my-run"])
    assert named.run_name() == "my-run"


def test_local_paths_become_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        FinetuneConfig,
        CONFIGS / "finetune_tiny.yaml",
        [
            "run.storage_path=out/runs",
            "init.model_uri=ckpt/model.pt",
            "data.manifests=[a/manifest.json, s3://b/m.json]",
        ],
    )
    assert config.storage_path() == str(tmp_path / "out" / "runs")
    assert config.init.model_uri == str(tmp_path / "ckpt" / "model.pt")
    assert config.data.manifests == [str(tmp_path / "a" / "manifest.json"), "s3://b/m.json"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["compute.precision=fp16"],
            "compute.precision = 'fp16': Input should be 'fp32' or 'bf16'",
        ),
        (["data.weights=[1.0, 2.0]"], "data.weights = [1.0, 2.0]: 2 weights for 1 manifests"),
        (["data.weights=[-1.0]"], "data.weights = [-1.0]: every weight must be > 0"),
        (["train.lr=-1"], "train.lr = -1: Input should be greater than 0"),
        (["train.lr_typo=1"], "train.lr_typo: unknown key"),
        (["run.name=bad name!"], "run.name = 'bad name!'"),
        (["model.name=unet"], "model.name = 'unet'"),
        (["init.model_uri=x.pt"], "init = {'model_uri': 'x.pt'}: pretraining starts from scratch"),
    ],
)
def test_a_bad_value_is_one_clear_line(overrides, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(PretrainConfig, CONFIGS / "pretrain_tiny.yaml", overrides)
    message = str(raised.value)
    assert expected in message
    assert len(message.splitlines()) == 1


def test_curriculum_cannot_shrink():
    with pytest.raises(
        ConfigError, match="curriculum.final_max_skip = 2: must be >= curriculum.initial_max_skip"
    ):
        load_config(
            FinetuneConfig,
            CONFIGS / "finetune_tiny.yaml",
            ["curriculum.initial_max_skip=3", "curriculum.final_max_skip=2"],
        )


def test_finetune_needs_a_model_to_start_from():
    with pytest.raises(ConfigError, match="init: missing"):
        load_config(FinetuneConfig, None, ["model.name=gc", "data.manifests=[m.json]"])


def test_the_command_rejects_a_bad_config_before_touching_ray():
    result = subprocess.run(
        [
            sys.executable,
            "pipelines/pretrain.py",
            "--config",
            "configs/pretrain_tiny.yaml",
            "compute.precision=fp16",
            "cluster.address=127.0.0.1:1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines == [
        "config error (configs/pretrain_tiny.yaml): compute.precision = 'fp16': "
        "Input should be 'fp32' or 'bf16'"
    ]
