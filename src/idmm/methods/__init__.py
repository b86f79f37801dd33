"""Method registry: adding a method is one file and one line here."""

from __future__ import annotations

import difflib

from ..config import ConfigError
from .base import Method
from .dino import DINO
from .idmm import IDMM
from .simclr import SimCLR
from .supcon import SupCon
from .supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "idmm": IDMM,
    "simclr": SimCLR,
    "supcon": SupCon,
    "dino": DINO,
    "supervised": Supervised,  # labels as targets, the fine-tuning recipe (finetune.* keys)
}


# How tables and reports name them.
DISPLAY_NAMES = {"idmm": "IDMM", "simclr": "SimCLR", "supcon": "SupCon", "dino": "DINO",
                 "supervised": "supervised", "scratch": "scratch"}  # fmt: skip


def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name, name)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'.{hint} Available: {', '.join(METHODS)}")
    return METHODS[name]
