"""Decode a Source once into one uint8 tensor held in memory.

Small datasets (a few thousand images) fit in RAM at training resolution, so every epoch
then reads tensors instead of decoding JPEGs again.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL.Image import Image
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from idmm.data import memmap
from idmm.data.sources import DataError, Source

_MAX_LISTED = 20  # bad files named in one error message
_CHUNK = 2048  # in-memory images resized per call: bounds temporary memory


@dataclass
class CachedData:
    images: torch.Tensor  # uint8, N x 3 x S x S, contiguous, in memory
    labels: torch.Tensor | None  # int64 N; None for unlabelled sources
    classes: list[str]
    size: int
    source_name: str
    kept: list[int]  # indices into the source of the images kept (bad ones skipped)
    # source index -> why it could not be decoded (skip_bad=true; empty for a reused memmap)
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def fit(image: Image | torch.Tensor, size: int) -> Image | torch.Tensor:
    """Shorter side to `size` (bicubic, antialiased), then the centre size x size square.

    Works on a PIL image (PIL's resampler) or a uint8 ... x C x H x W tensor (torch's).
    """
    image = TF.resize(image, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(image, [size, size])


def build_cache(
    src: Source,
    size: int,
    skip_bad: bool = False,
    progress: bool = False,
    store: str | Path | None = None,
) -> CachedData:
    """Decode, resize and centre-crop every image of `src` once; see `fit`.

    Unreadable files are collected over the whole pass and reported together: a DataError,
    or with skip_bad=True a warning, and they are left out (labels follow). With `store` (a
    directory) the images live in a memory-mapped file there, reused while the source is
    unchanged (`memmap.py`); otherwise in memory.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    size = int(size)
    if len(src) == 0:
        raise DataError(f"{src.name} [{src.split}] has no images")
    errors: dict[int, str] = {}

    def fill(out: torch.Tensor) -> list[int]:
        if src.array is not None:
            _from_array(src, size, progress, out)
            return list(range(len(src)))
        return _from_files(src, size, skip_bad, progress, out, errors)

    if store is not None:
        images, kept, _ = memmap.load_or_build(src, size, Path(store), fill)
    else:
        images = torch.empty((len(src), 3, size, size), dtype=torch.uint8)
        kept = fill(images)
        images = images[: len(kept)]
    labels = None
    if src.labels is not None:
        labels = torch.tensor([src.labels[i] for i in kept], dtype=torch.int64)
    return CachedData(images, labels, list(src.classes), size, src.name, kept, errors)


def _from_array(src: Source, size: int, progress: bool, out: torch.Tensor) -> None:
    """In-memory datasets: resize whole chunks with torch instead of image by image."""
    array = src.array
    gray = array.ndim == 3
    if array.dtype != np.uint8 or not (gray or (array.ndim == 4 and array.shape[3] in (1, 3))):
        raise DataError(
            f"{src.name}: in-memory images must be uint8 N x H x W or N x H x W x 1/3, "
            f"got {array.dtype} {array.shape}"
        )
    indices = np.asarray(src.items, dtype=np.int64)
    starts = range(0, len(indices), _CHUNK)
    for start in tqdm(starts, disable=not progress, desc=f"resizing {src.name}", unit="chunk"):
        chunk = torch.from_numpy(array[indices[start : start + _CHUNK]])  # fancy index: a copy
        chunk = chunk.unsqueeze(1) if gray else chunk.permute(0, 3, 1, 2)
        # A 1-channel result broadcasts to 3 identical channels, as PIL's L -> RGB does.
        out[start : start + len(chunk)] = fit(chunk, size)


def _from_files(
    src: Source, size: int, skip_bad: bool, progress: bool, out: torch.Tensor, errors: dict
) -> list[int]:
    """Decode into `out`; the kept images end up in its first rows, their indices returned, and
    `errors` gets the reason for each skipped one."""

    def decode(i: int) -> Exception | None:
        try:
            out[i] = TF.pil_to_tensor(fit(src.load(i), size))
        except Exception as error:  # PIL raises many types: OSError, SyntaxError, bomb errors...
            return error
        return None

    # Decoding is the slow part, and PIL releases the GIL while decoding and resizing.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(decode, range(len(src)))
        desc = f"decoding {src.name}"
        results = list(tqdm(results, total=len(src), disable=not progress, desc=desc))
    bad = [(i, error) for i, error in enumerate(results) if error is not None]
    if not bad:
        return list(range(len(src)))
    listed = "\n".join(
        f"  {src.describe(i)}: {type(e).__name__}: {e}" for i, e in bad[:_MAX_LISTED]
    )
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    report = f"{len(bad)} of {len(src)} images of {src.name} [{src.split}] could not be decoded:\n"
    report += listed + more
    if not skip_bad:
        raise DataError(f"{report}\nfix or remove them, or set data.skip_bad=true to skip them")
    if len(bad) == len(src):
        raise DataError(f"{report}\nno image is left; check that these are image files")
    warnings.warn(f"{report}\nskipping them (data.skip_bad=true)", stacklevel=3)
    errors.update({i: f"{type(e).__name__}: {e}" for i, e in bad})
    bad_set = {i for i, _ in bad}
    kept = [i for i in range(len(src)) if i not in bad_set]
    for j, i in enumerate(kept):  # compact in place (also in a memory-mapped file); i >= j
        if i != j:
            out[j] = out[i]
    return kept
