"""Image sources: one uniform view of every dataset layout idmm can train on.

A `Source` is a list of images (file paths, or indices into an in-memory uint8 array) with
optional labels. It only finds and decodes images; resizing and caching live in
`idmm.data.cache`. Nothing here downloads, except Fashion-MNIST as a last resort.

This module holds the generic sources (image folders, CSV files, Fashion-MNIST), the entry
point `open_source` and `subset_per_class`. The shared basics (`Source`, `DataError`,
`to_rgb`) live in `idmm.data.base` and are re-exported here; the named dataset layouts
(flowers102, dtd, ...) live in `idmm.data.layouts`. Import from this module.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import os
import warnings

import numpy as np

from idmm.data.base import DataError, Source, _check_files_exist, _inside
from idmm.data.base import to_rgb as to_rgb  # re-exported: part of this module's API
from idmm.data.clipart import open_clipart
from idmm.data.layouts import LAYOUTS, OPENERS

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")

# Same names and order as torchvision.datasets.FashionMNIST.classes (not imported: torchvision
# takes seconds to import and this module should stay light).
# fmt: off
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# fmt: on
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist
FASHION_MNIST_CACHE_DIR = "~/.cache/idmm/fashion-mnist"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------- folders


def _is_image_name(name: str) -> bool:
    # Dot-files are skipped: macOS "._x.jpg" resource forks look like images but are not.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(directory: str) -> list[str]:
    """All image files below `directory`, sorted so the order is the same on every machine."""
    found = []
    # followlinks=False: symlinked sub-directories are not entered, so a symlink loop cannot hang.
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .ipynb_checkpoints etc.
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image_name(f))
    return sorted(found)


def _open_split_dir(directory: str, name: str, split: str) -> Source:
    """A directory of class sub-folders (labelled) or of image files (unlabelled)."""
    entries = sorted(os.scandir(directory), key=lambda e: e.name)
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.path for e in entries if not e.is_dir() and _is_image_name(e.name)]
    per_class = {e.name: _images_under(e.path) for e in subdirs}
    classes = [c for c, files in per_class.items() if files]
    if classes:
        empty = [os.path.join(directory, c) for c, files in per_class.items() if not files]
        if empty:
            warnings.warn(
                f"ignoring class folders without images: {', '.join(empty)}", stacklevel=4
            )
        if loose:
            warnings.warn(
                f"ignoring {len(loose)} image files directly in {directory} (e.g. {loose[0]}): "
                "it has class sub-folders, so only the images inside those are used",
                stacklevel=4,
            )
        items, labels = [], []
        for label, c in enumerate(classes):
            items += per_class[c]
            labels += [label] * len(per_class[c])
        return Source(name, split, items, labels, classes)
    if loose:
        return Source(name, split, loose, None, [])
    raise DataError(
        f"no images found under {directory} (expected class sub-folders or image files "
        f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
    )


def _open_folder(path: str, split: str) -> Source | None:
    root = os.path.abspath(path)
    name = f"folder:{root}"
    if not os.path.isdir(os.path.join(root, "train")):
        return _open_split_dir(root, name, split) if split == "train" else None
    if split == "train":
        return _open_split_dir(os.path.join(root, "train"), name, split)
    for candidate in ("test", "val"):  # test preferred: it is the held-out set when both exist
        if os.path.isdir(os.path.join(root, candidate)):
            return _open_split_dir(os.path.join(root, candidate), name, split)
    return None


# --------------------------------------------------------------------------- CSV


def _sorted_classes(names: list[str]) -> list[str]:
    unique = set(names)
    try:  # numeric labels sort as numbers, so "10" comes after "9" and label k keeps index k
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _open_csv(path: str, split: str) -> Source | None:
    csv_path = os.path.abspath(path)
    if split == "test":
        sibling = os.path.join(os.path.dirname(csv_path), "test.csv")
        if os.path.basename(csv_path) != "train.csv" or not os.path.isfile(sibling):
            return None
        csv_path = sibling
    if not os.path.isfile(csv_path):
        raise DataError(f"CSV file not found: {csv_path}")
    base = os.path.dirname(csv_path)
    items, names = [], []
    # utf-8-sig: spreadsheet programs often prepend a byte-order mark.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for row in reader:
            cells = [c.strip() for c in row]
            where = f"{csv_path} line {reader.line_num}"
            if not any(cells) or (reader.line_num == 1 and cells == ["path", "label"]):
                continue
            if len(cells) != 2 or not cells[0] or not cells[1]:
                raise DataError(f"{where}: expected 'path,label' with both filled in, got {row!r}")
            full = os.path.normpath(os.path.join(base, cells[0]))
            if not _inside(base, full):
                raise DataError(
                    f"{where}: path {cells[0]!r} points outside {base}; move the images under "
                    "the CSV's folder (paths outside it are refused so a CSV cannot read any file)"
                )
            items.append(full)
            names.append(cells[1])
    if not items:
        raise DataError(f"{csv_path} lists no images; expected rows 'path,label'")
    items, names = _drop_duplicates(items, names, csv_path)
    _check_files_exist(items, csv_path)
    classes = _sorted_classes(names)
    index = {c: i for i, c in enumerate(classes)}
    return Source(f"csv:{csv_path}", split, items, [index[n] for n in names], classes)


def _drop_duplicates(items: list[str], names: list[str], where: str):
    """A file listed twice would be two "instances" with the same pixels: keep its first row,
    with a warning; listed with two different labels it is an error."""
    first: dict[str, str] = {}
    keep = []
    for i, (item, name) in enumerate(zip(items, names)):
        if item not in first:
            first[item] = name
            keep.append(i)
        elif first[item] != name:
            raise DataError(
                f"{where}: {item} is listed with two labels, {first[item]!r} and {name!r}; "
                "keep one row per image"
            )
    if len(keep) < len(items):
        warnings.warn(
            f"{where}: {len(items) - len(keep)} rows repeat an image listed before; "
            "each image is used once",
            stacklevel=3,
        )
    return [items[i] for i in keep], [names[i] for i in keep]


# --------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an IDX file (MNIST format): bytes 0 0 8 ndim, ndim big-endian uint32 sizes, data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"cannot read {path} ({error}); delete it and reinstall Fashion-MNIST"
        ) from error
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d uint8 data (magic {data[:4].hex()}, expected "
            f"0000080{ndim}); replace it with the original Fashion-MNIST file"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt (header says shape {shape}); replace it")
    # bytearray makes the array writable, so torch.from_numpy and friends work without warnings.
    return np.frombuffer(bytearray(data), np.uint8, offset=header).reshape(shape)


def _find_fashion_mnist(directory: str, split: str) -> list[str] | None:
    """The split's image and label files in `directory` (gz or not, flat or torchvision layout)."""
    found = []
    for stem in _FASHION_MNIST_FILES[split]:
        candidates = [
            os.path.join(d, stem + ext)
            for d in (directory, os.path.join(directory, "FashionMNIST", "raw"))
            for ext in (".gz", "")
        ]
        hit = next((c for c in candidates if os.path.isfile(c)), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _fashion_mnist_files(split: str, root: str | None) -> list[str]:
    if root is not None:  # an explicit root must hold the files: never silently use another copy
        files = _find_fashion_mnist(root, split)
        if files is None:
            raise DataError(
                f"Fashion-MNIST {split} files not found in data.root={root}: expected "
                f"{' and '.join(_FASHION_MNIST_FILES[split])} (.gz or unzipped) there "
                f"or in {os.path.join(root, 'FashionMNIST', 'raw')}"
            )
        return files
    cache = os.path.expanduser(FASHION_MNIST_CACHE_DIR)
    for directory in (FASHION_MNIST_SYSTEM_DIR, cache):
        files = _find_fashion_mnist(directory, split)
        if files is not None:
            return files
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(cache, train=(split == "train"), download=True)
    except Exception as error:  # no network, proxy, disk full, ...: all end the same way
        raise DataError(
            f"Fashion-MNIST is not in {FASHION_MNIST_SYSTEM_DIR} and downloading it into {cache} "
            f"failed ({error}); install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass data.root=DIR with the four idx files"
        ) from error
    files = _find_fashion_mnist(cache, split)
    if files is None:
        raise DataError(
            f"Fashion-MNIST download into {cache} left no {split} files; delete {cache}"
        )
    return files


def _open_fashion_mnist(split: str, root: str | None) -> Source:
    image_file, label_file = _fashion_mnist_files(split, root)
    images = _read_idx(image_file, ndim=3)
    labels = _read_idx(label_file, ndim=1)
    if len(images) != len(labels) or (labels.size and labels.max() >= 10):
        raise DataError(f"{image_file} and {label_file} do not match; replace them with originals")
    items, classes = list(range(len(images))), list(FASHION_MNIST_CLASSES)
    return Source("fashion-mnist", split, items, labels.astype(int).tolist(), classes, images)


def _open_sklearn_digits(split: str) -> Source:
    """scikit-learn's 1,797 real 8x8 handwritten digits (they ship inside its wheel).

    The set has no test split of its own; a fixed, seeded, stratified 20% of it is this
    source's test split, so pre-training on `train` never sees a test image under any command.
    """
    try:  # scikit-learn is a dependency; a trimmed install may lack it
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "data=sklearn-digits needs scikit-learn; pip install scikit-learn"
        ) from None  # noqa: E501
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels
    labels = digits.target.astype(int)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test[np.random.default_rng([0, c]).permutation(members)[: len(members) // 5]] = True
    keep = np.flatnonzero(test if split == "test" else ~test).tolist()
    classes = [str(c) for c in range(10)]
    return Source("sklearn-digits", split, keep, labels[keep].tolist(), classes, images)


def _open_fmnist_2040(split: str, root: str | None) -> Source:
    """FMNIST-2040, the small-data protocol: 204 training images per class (seed 0) of
    Fashion-MNIST's train split; the full 10,000-image test split."""
    src = _open_fashion_mnist(split, root)
    if split == "train":
        src = subset_per_class(src, 204, seed=0)
    return Source("fmnist-2040", split, src.items, src.labels, src.classes, src.array)


_ALIASES = {"fmnist": "fashion-mnist", "fmnist2040": "fmnist-2040", "digits": "sklearn-digits"}
DATASET_NAMES = sorted(["fashion-mnist", "fmnist-2040", "sklearn-digits", "clipart", *LAYOUTS])


# --------------------------------------------------------------------------- public API


def dataset_key(spec: str) -> str:
    """A dataset name as `open_source` knows it: lower case, dashes, aliases resolved."""
    key = str(spec).strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def open_source(spec: str, split: str = "train", root: str | None = None) -> Source | None:
    """Open one split of a dataset; None when the dataset has no such split.

    `spec` is a dataset name (DATASET_NAMES, or alias "fmnist"), a .csv file of `path,label`
    rows, or a directory. A name wins over a same-named directory: write "./dtd" for the
    directory. `root` is where a named dataset lives; folder and CSV specs ignore it.
    """
    spec = os.fspath(spec)  # pathlib.Path works too
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    key = dataset_key(spec)
    if key in ("fashion-mnist", "fmnist-2040"):
        root = None if root is None else os.path.expanduser(root)
        return (_open_fashion_mnist if key == "fashion-mnist" else _open_fmnist_2040)(split, root)
    if key == "sklearn-digits":
        return _open_sklearn_digits(split)
    if key == "clipart":  # data.root: the package's png/ folder unless given
        return open_clipart(root, split)
    if key in OPENERS:
        if root is None:
            raise DataError(f"dataset {key} needs data.root=DIR containing {LAYOUTS[key]}")
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise DataError(
                f"data.root={root} for dataset {key} is not a directory; "
                f"it must contain {LAYOUTS[key]}"
            )
        return OPENERS[key](root, split)
    path = os.path.expanduser(spec)
    if path.lower().endswith(".csv"):
        return _open_csv(path, split)
    if os.path.isdir(path):
        return _open_folder(path, split)
    if os.path.exists(path):
        raise DataError(f"{os.path.abspath(path)} is neither a directory nor a .csv file")
    if "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        raise DataError(f"data path {os.path.abspath(path)} does not exist")
    names = sorted([*DATASET_NAMES, *_ALIASES])
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(
        f"unknown dataset {spec!r}{hint}; valid names: {', '.join(names)}; "
        "or pass a directory of images or a path,label .csv file"
    )


def subset_per_class(src: Source, n: int, seed: int = 0) -> Source:
    """Exactly `n` images of every class, chosen at random but deterministically per (src, n, seed).

    Items keep their original order, so `describe` and `array` indices still refer to `src`.
    """
    if src.labels is None:
        raise DataError(
            f"{src.name}: cannot take {n} images per class from an unlabelled source; "
            "use a dataset with class sub-folders or labels"
        )
    if n < 1 or seed < 0:
        raise DataError(f"images per class must be >= 1 and seed >= 0, got n={n}, seed={seed}")
    labels = np.asarray(src.labels)
    chosen = []
    for c, name in enumerate(src.classes):
        members = np.flatnonzero(labels == c)
        if len(members) < n:
            raise DataError(
                f"{src.name} [{src.split}]: class {name!r} has only {len(members)} "
                f"images, fewer than the {n} per class requested; lower n"
            )
        # One independent stream per (seed, class); default_rng(seed + c) would make
        # seed 1 / class 0 repeat seed 0 / class 1.
        chosen.append(np.random.default_rng([seed, c]).permutation(members)[:n])
    keep = np.sort(np.concatenate(chosen)).tolist() if chosen else []
    items, labels = [src.items[i] for i in keep], [src.labels[i] for i in keep]
    return Source(src.name, src.split, items, labels, list(src.classes), src.array)
