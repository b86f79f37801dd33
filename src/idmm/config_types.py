"""Conversion of config values (from YAML or `key=value` strings) to the schema's types.

The schema (idmm.config) annotates every field; `coerce` turns what a user wrote into that type
or raises a ConfigError naming the key, so `epochs=ten` or `aug.global_scale=0.1` never reaches
training.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad key or value in a config, a recipe or a `key=value` override."""


# (here, free of torch, so that the CLI can catch them without importing the engine)
class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read or does not fit (engine.checkpoint)."""


class TrainingError(RuntimeError):
    """A run that cannot go on: a non-finite loss, a batch larger than the data (engine.trainer)."""


def _parse_scalar(text: str) -> Any:
    """YAML scalar parsing, plus floats like `1e-3` that YAML 1.1 (PyYAML) reads as strings."""
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:  # control characters, unbalanced brackets...: the text as it is
        value = text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise naming the key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        nothing = ("none", "null", "", "auto")  # a None default means "auto": both spell it
        if value is None or (isinstance(value, str) and value.lower() in nothing):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if isinstance(value, str) and tp is not str:
        value = _parse_scalar(value)
        if tp is tuple or origin is tuple:
            if isinstance(value, str):  # "0.1,2" -> [0.1, 2]
                value = [_parse_scalar(v) for v in value.split(",")]
            elif not isinstance(value, (list, tuple)):
                value = [value]
    try:
        if origin is tuple:
            seq = list(value) if isinstance(value, (list, tuple)) else None
            if seq is None:
                raise TypeError
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(key, v, args[0]) for v in seq)
            if len(seq) != len(args):
                raise ConfigError(f"config key '{key}' expects {len(args)} values, got {value!r}")
            return tuple(coerce(key, v, a) for v, a in zip(seq, args))
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"config key '{key}' expects {name}, got {value!r}") from None
    raise ConfigError(f"config key '{key}' has an unsupported type {tp}")
