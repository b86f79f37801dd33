"""The method registry. Adding a method is one file (its `@register`ed Method subclass and its
settings dataclass, side by side) and its name in the import line below."""

from __future__ import annotations

import difflib

from ..config_types import ConfigError
from . import dino, idmm, simclr, supcon, supervised  # noqa: F401  (each registers itself)
from .base import METHODS, Method


def method_settings() -> dict[str, type]:
    """Config section name -> settings dataclass, for every registered method (SimCLR and
    SupCon share `contrastive`)."""
    return {m.settings_key: m.Settings for m in METHODS.values() if m.Settings is not None}


def display_name(name: str) -> str:
    """How tables and reports name a method (or a baseline such as `scratch`)."""
    return METHODS[name].display_name if name in METHODS else name


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'.{hint} Available: {', '.join(METHODS)}")
    return METHODS[name]
