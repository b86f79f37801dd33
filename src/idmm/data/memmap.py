"""A decoded cache too large for memory: a memory-mapped uint8 .npy file, built once.

The file is named after the source and the resolution plus a hash of what the images are (paths,
sizes and modification times, or the array's shape and a sample of its bytes), so later runs and
other commands on the same data reuse it and a changed source gets a new one. It is written under
a temporary name and renamed when complete: a killed build never leaves a file that looks done.
Pages are read on demand by the OS and shared by every process on the node that maps the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..engine.checkpoint import write_json
from .base import Source

DEFAULT_DIR = Path(os.environ.get("IDMM_CACHE", Path.home() / ".cache" / "idmm"))


def fingerprint(src: Source, size: int) -> str:
    """What the cached pixels depend on; any change gives another file."""
    h = hashlib.sha1(json.dumps([src.name, src.split, size, src.classes]).encode())
    if src.array is not None:
        h.update(repr((src.array.shape, src.array.dtype.str)).encode())
        flat = src.array.reshape(-1)
        h.update(flat[:: max(1, flat.size // 1_000_000)].tobytes())
        h.update(np.asarray(src.items, dtype=np.int64).tobytes())
    else:
        for item in src.items:
            st = os.stat(item)
            h.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if src.labels is not None:
        h.update(np.asarray(src.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def cache_path(src: Source, size: int, directory: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{src.name}-{src.split}")[-80:]
    return Path(directory) / f"{name}-{size}px-{fingerprint(src, size)}.npy"


def load_or_build(
    src: Source, size: int, directory: Path, fill: Callable[[torch.Tensor], list[int]]
) -> tuple[torch.Tensor, list[int], Path]:
    """The cached (N, 3, size, size) images and the kept source indices, building them with
    `fill(out)` (which decodes into `out`, compacts the kept rows to the front and returns their
    indices) when no complete file exists yet."""
    path = cache_path(src, size, directory)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            arr = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(src), 3, size, size)
            )
            kept = fill(torch.from_numpy(arr))
            arr.flush()
            del arr
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        write_json(meta, {"kept": kept, "source": src.name, "split": src.split, "size": size})
    kept = json.loads(meta.read_text())["kept"]
    # copy-on-write mapping: a stray in-place write never reaches the shared file
    images = torch.from_numpy(np.load(path, mmap_mode="c"))[: len(kept)]
    return images, kept, path
