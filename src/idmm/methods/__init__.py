"""Method registry: adding a method is one file (its Method subclass and its settings
dataclass, side by side) and one entry in METHODS."""

from __future__ import annotations

import difflib

from ..config_types import ConfigError
from .base import Method
from .dino import DINO
from .idmm import IDMM
from .simclr import SimCLR
from .supcon import SupCon
from .supervised import Supervised

METHODS: dict[str, type[Method]] = {m.name: m for m in (IDMM, SimCLR, SupCon, DINO, Supervised)}


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
