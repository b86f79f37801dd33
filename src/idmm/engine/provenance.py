"""What made a run: the command, the versions and the machine (provenance.json in a run
directory, and every benchmark result in bench/results/)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib import metadata

import torch

from .distributed import cpu_has_bf16


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    cuda = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "command": shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {p: _version(p) for p in ("idmm", "torch", "torchvision", "timm")}
        | {"python": platform.python_version()},
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "bf16_cpu": cpu_has_bf16(),
    }
