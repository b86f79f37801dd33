"""The method registry. Adding a method is its file (a `@register`ed Method subclass), its
settings dataclass in `settings.py` and its name in `METHOD_NAMES` there.

The methods import torch and timm, which take seconds: they are imported on first use of the
registry (`get_method`, `display_name`, `METHODS`), so that configs, `idmm keys` and `--help`
(which need only the settings) start fast.
"""

from __future__ import annotations

import difflib
from importlib import import_module

from ..config_types import ConfigError
from .settings import METHOD_NAMES, SETTINGS


def registry() -> dict:
    """name -> Method class, every method imported (each registers itself)."""
    for name in METHOD_NAMES:
        import_module(f"{__name__}.{name}")
    from .base import METHODS

    return METHODS


def __getattr__(name: str):  # `from idmm.methods import METHODS, Method`: imported on use
    if name == "METHODS":
        return registry()
    if name == "Method":
        from .base import Method

        return Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def method_settings() -> dict[str, type]:
    """Config section name -> settings dataclass, for every method (SimCLR and SupCon share
    `contrastive`)."""
    return dict(SETTINGS)


def check_name(name: str) -> None:
    """An unknown `method=` fails naming the valid ones (without importing the methods)."""
    if name not in METHOD_NAMES:
        close = difflib.get_close_matches(name, METHOD_NAMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'.{hint} Available: {', '.join(METHOD_NAMES)}")


def display_name(name: str) -> str:
    """How tables and reports name a method (or a baseline such as `scratch`)."""
    methods = registry()
    return methods[name].display_name if name in methods else name


def get_method(name: str):
    check_name(name)
    return registry()[name]
