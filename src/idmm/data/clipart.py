"""`data=clipart`: real clip-art from Debian's openclipart-png package, 8 classes x (200 train +
100 test) images, drawn once per class with a fixed seed (as FMNIST-2040 is drawn from
Fashion-MNIST).

    apt-get install openclipart-png       # /usr/share/openclipart/png/<category>/**/*.png

The classes are the package's category folders with at least 300 usable images. Usable: a PNG
whose header opens and that has at most 4 megapixels (the package holds a few of 100-600
megapixels, over PIL's decompression-bomb limits, slow to decode and pointless at 16-112 px).
Clip-art is larger and more varied than the two grey datasets: colour, transparency
(composited on white, as every transparent image in idmm), sizes from 80 px to a few thousand,
so the resolution a run trains at is a real choice.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DataError, Source

ROOT = "/usr/share/openclipart/png"
CLASSES = ("animals", "computer", "food", "people", "recreation", "shapes",
           "signs_and_symbols", "transportation")  # fmt: skip
TRAIN, TEST = 200, 100  # per class
MAX_PIXELS = 4_000_000


def _usable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's bomb warning: such a file is left out anyway
            with Image.open(path) as im:
                w, h = im.size
    except Exception:  # unreadable (or over PIL's hard limit): not drawn
        return False
    return w * h <= MAX_PIXELS


def _drawn(folder: Path, c: int, train: int, test: int) -> tuple[list[str], list[str]]:
    files = sorted(p for p in folder.rglob("*.png") if _usable(p))
    if len(files) < train + test:
        raise DataError(
            f"{folder} has {len(files)} usable PNG files; data=clipart draws {train + test} per "
            "class. Install the full package (apt-get install openclipart-png) or point "
            "data.root at its png/ folder"
        )
    order = np.random.default_rng([0, c]).permutation(len(files))
    picked = [str(files[i]) for i in order[: train + test]]
    return picked[:train], picked[train:]


def open_clipart(root: str | None, split: str, train: int = TRAIN, test: int = TEST) -> Source:
    """The train or test split of the clip-art dataset under `root` (default: the package's)."""
    base = Path(os.path.expanduser(root or ROOT))
    if not base.is_dir():
        raise DataError(
            f"data=clipart reads {base}, which does not exist: apt-get install openclipart-png, "
            "or set data.root to a folder with the category folders "
            f"({', '.join(CLASSES)})"
        )
    missing = [c for c in CLASSES if not (base / c).is_dir()]
    if missing:
        raise DataError(f"{base} lacks the clip-art categories {', '.join(missing)}")
    items, labels = [], []
    for c, name in enumerate(CLASSES):
        tr, te = _drawn(base / name, c, train, test)
        chosen = tr if split == "train" else te
        items += chosen
        labels += [c] * len(chosen)
    return Source("clipart", split, items, labels, list(CLASSES))
