"""Model settings: the papers' `full` size, a `tiny` size for CPUs, and their validation.

A network's `config` is a plain JSON dict; `build_model(**config)` rebuilds the same
architecture. Only the options a model actually has appear in its config, so a typo or an
option of another model is rejected instead of silently ignored.
"""

from __future__ import annotations

MODEL_NAMES = ("gc", "gvos_scm", "stm")
SIZES = ("tiny", "full")
BACKBONES = ("resnet18", "resnet50")

# Options every model has, per size. `full` follows the papers: ResNet-50 cut after res4,
# C_N = 128 (key, query), C_M = 512 (value), decoder 256 channels.
_COMMON = {
    "tiny": {
        "backbone": "resnet18",
        "key_channels": 64,
        "value_channels": 128,
        "decoder_channels": 64,
    },
    "full": {
        "backbone": "resnet50",
        "key_channels": 128,
        "value_channels": 512,
        "decoder_channels": 256,
    },
}

# Options only some models have.
_SPECIFIC = {
    "gc": {"tiny": {}, "full": {}},
    # STM memory rule: first frame + previous frame + every `memory_every`-th frame.
    "stm": {"tiny": {"memory_every": 5}, "full": {"memory_every": 5}},
    # GVOS-SCM: ASPP after context distribution, boundary-aware residual refinement.
    "gvos_scm": {
        "tiny": {"aspp_channels": 64, "aspp_rates": [2, 4, 6], "refine_channels": 16},
        "full": {"aspp_channels": 256, "aspp_rates": [6, 12, 18], "refine_channels": 64},
    },
}


def default_config(name: str, size: str) -> dict:
    """The complete option set of model `name` at `size` (before overrides)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    return {"name": name, "size": size, **_COMMON[size], **_SPECIFIC[name][size]}


def resolve_config(name: str, size: str, overrides: dict) -> dict:
    """Defaults of (`name`, `size`) with `overrides` applied and checked; a plain JSON dict."""
    config = default_config(name, size)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        options = ", ".join(k for k in config if k not in ("name", "size"))
        raise ValueError(
            f"model {name!r} has no option {', '.join(unknown)}; its options are: {options}"
        )
    config.update(overrides)
    _check(config)
    if "aspp_rates" in config:
        config["aspp_rates"] = [int(rate) for rate in config["aspp_rates"]]
    return config


def _check(config: dict) -> None:
    if config["backbone"] not in BACKBONES:
        raise ValueError(
            f"backbone must be one of {', '.join(BACKBONES)}, got {config['backbone']!r}"
        )
    for key in (
        "key_channels",
        "value_channels",
        "decoder_channels",
        "memory_every",
        "aspp_channels",
        "refine_channels",
    ):
        if key in config and not _positive_int(config[key]):
            raise ValueError(f"{key} must be a positive integer, got {config[key]!r}")
    rates = config.get("aspp_rates", [1])
    if not isinstance(rates, list | tuple) or not rates or not all(_positive_int(r) for r in rates):
        raise ValueError(f"aspp_rates must be a non-empty list of positive integers, got {rates!r}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
