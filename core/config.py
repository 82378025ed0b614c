"""Config files for the pipeline stages: YAML, `key=value` overrides, validated before any work.

Every stage describes its config as a pydantic model deriving `StrictModel` (unknown keys are
errors) and loads it with `load_config(Schema, path, overrides)`. A bad value raises
`ConfigError`, whose message has one line per problem, naming the key, the value and the rule:

    config error (configs/pretrain_gc.yaml): train.lr = -1.0: Input should be greater than 0
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "config_hash",
    "flatten",
    "load_config",
    "read_yaml",
]

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and where."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config error ({path}): not valid YAML: {err}".replace("\n", " ")
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"config error ({path}): the top level must be a mapping of keys")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars/lists."""
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config error: override {override!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw_value) if raw_value != "" else ""
        except yaml.YAMLError:
            value = raw_value
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config error: override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _describe(error: dict[str, Any], data: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: missing (required)"
    return f"{location} = {error.get('input')!r}: {error['msg']}"


def load_config(
    schema: type[Schema],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Schema:
    """Load `path` (YAML, optional), apply `overrides`, validate against `schema`."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        where = f" ({path})" if path is not None else ""
        problems = "\n".join(
            f"config error{where}: {_describe(e, data)}" for e in err.errors(include_url=False)
        )
        raise ConfigError(problems) from None


def flatten(config: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a config into `{"train.lr": 1e-5, ...}` (for MLflow params)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """A stable sha256 of a config's content (key order does not matter)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
