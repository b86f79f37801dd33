"""Atomic checkpoints and safe loading.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one: a run killed while saving leaves the previous checkpoint intact. Loading uses
`weights_only=True`, so a planted pickle cannot execute code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..config_types import CheckpointError  # noqa: F401  (raised here; defined there)


def atomic_write(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start without resume=true or check out=")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot load checkpoint {path}: {e}. It is corrupt or not an idmm checkpoint "
            "(only weights are loaded, never arbitrary pickled objects)"
        ) from e


def write_json(path: str | Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict:
    """A JSON file written by write_json, or {} when there is none yet."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
