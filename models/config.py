"""Model settings: the papers' `full` size, a `tiny` size for CPUs, and their validation.

A network's `config` is a plain JSON dict; `build_model(**config)` rebuilds the same
architecture. Only the options a model actually has appear in its config, so a typo or an
option of another model is rejected instead of silently ignored.

Options added after models were first saved have two defaults: the one a newly built model
gets, and the one that rebuilds a model saved before the option existed (`_ADDED_LATER`).
Whoever loads a saved config passes it through `saved_config` first, so an old
`{"name": "gc", ..., "decoder_channels": 256}` still rebuilds the 4-channel memory encoder its
weights were trained for, while `build_model("gc", "tiny")` gets the current defaults.
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

# GC memory rule of streaming inference: the first frame's share of the global context
# (None: the paper's running mean over all frames; see models.memory.GlobalContextMemory).
_GC_MEMORY = {"first_frame_weight": None}

# Options only some models have.
_SPECIFIC = {
    "gc": {"tiny": _GC_MEMORY, "full": _GC_MEMORY},
    # STM memory rule: first frame + previous frame + every `memory_every`-th frame.
    "stm": {"tiny": {"memory_every": 5}, "full": {"memory_every": 5}},
    # GVOS-SCM: ASPP after context distribution, boundary-aware residual refinement; the
    # GC memory.
    "gvos_scm": {
        "tiny": {"aspp_channels": 64, "aspp_rates": [2, 4, 6], "refine_channels": 16, **_GC_MEMORY},
        "full": {
            "aspp_channels": 256,
            "aspp_rates": [6, 12, 18],
            "refine_channels": 64,
            **_GC_MEMORY,
        },
    },
}

# Options every model has that saved models may lack: (default of a new model, value that
# rebuilds a model saved before the option existed).
#   other_objects_mask  the memory encoder also reads the union of the other objects' masks
#                       (RGB + mask + others, 5 channels, as STM's released code and STCN)
#   train_size          shorter side in px of the clips the model was trained on (None:
#                       unknown); the streaming segmenter runs at this size by default
#   key_coordinates     the key/value heads also read each res4 cell's (x, y) (off in the
#                       papers; lets the position-free GC context hold where the object
#                       was, see models.heads)
_ADDED_LATER = {
    "other_objects_mask": (True, False),
    "train_size": (None, None),
    "key_coordinates": (False, False),
}


def default_config(name: str, size: str) -> dict:
    """The complete option set of a newly built model `name` at `size` (before overrides)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    added = {key: new for key, (new, _) in _ADDED_LATER.items()}
    return {"name": name, "size": size, **_COMMON[size], **_SPECIFIC[name][size], **added}


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


def saved_config(config: dict) -> dict:
    """A config read back from a saved model, with the options it predates set to the values
    that rebuild the model it was saved from."""
    return {**{key: old for key, (_, old) in _ADDED_LATER.items()}, **config}


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
    for key in ("other_objects_mask", "key_coordinates"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} must be true or false, got {config[key]!r}")
    weight = config.get("first_frame_weight")
    if weight is not None and not (
        isinstance(weight, int | float) and not isinstance(weight, bool) and 0 < weight <= 1
    ):
        raise ValueError(f"first_frame_weight must be a number in (0, 1] or None, got {weight!r}")
    train_size = config["train_size"]
    if train_size is not None and not _positive_int(train_size):
        raise ValueError(f"train_size must be a positive integer (px) or None, got {train_size!r}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
