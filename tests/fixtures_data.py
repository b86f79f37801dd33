"""Tiny on-disk datasets, in every layout idmm.data.sources reads, made of real pixels.

The pixels are Fashion-MNIST test images (read with idmm's own loader from the Debian
package dataset-fashion-mnist), enlarged to a non-square size so resizing and cropping
are exercised. Each `make_*` builder writes one layout under `root` and returns the
expected contents: {"train": [(image path, class name), ...], "test": [...]} in order.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idmm.data.sources import Source, open_source

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not in {FMNIST_DIR}: apt-get install dataset-fashion-mnist",
)
Expected = dict[str, list[tuple[str, str]]]


@functools.lru_cache(maxsize=1)
def fmnist_test() -> Source:
    return open_source("fashion-mnist", "test", root=FMNIST_DIR)


def pixels(k: int, rgb: bool = True, size: tuple[int, int] = (36, 30)) -> np.ndarray:
    """Fashion-MNIST test image k, resized to `size` (W, H); tinted to 3 distinct channels."""
    gray = np.asarray(Image.fromarray(fmnist_test().array[k]).resize(size, Image.BILINEAR))
    return np.stack([gray, 255 - gray, gray // 2], axis=-1) if rgb else gray


def write_image(path: Path | str, k: int, rgb: bool = True) -> str:
    """Write Fashion-MNIST test image k to `path` (format from the extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(k, rgb)).save(path)
    return str(path)


def pairs(src: Source) -> list[tuple[str, str]]:
    """(item, class name) for every image of a labelled source, in order."""
    return [(str(item), src.classes[label]) for item, label in zip(src.items, src.labels)]


def make_class_folder(
    root: Path, counts: dict[str, int], ext: str = ".jpg", first: int = 0
) -> list[tuple[str, str]]:
    """root/<class>/<class>_<i><ext>: counts[class] images each, from test images first, ..."""
    out, k = [], first
    for cls, n in counts.items():
        for i in range(n):
            out.append((write_image(root / cls / f"{cls}_{i}{ext}", k, rgb=i % 2 == 0), cls))
            k += 1
    return sorted(out)


def make_flowers102(root: Path) -> Expected:
    from torchvision.datasets import Flowers102

    savemat = pytest.importorskip("scipy.io").savemat  # .mat layouts need scipy

    base = root / "flowers-102"
    labels = [3, 1, 2, 3, 1, 1, 2, 3, 2]  # 1-based class of image_00001 ... image_00009
    setid = {"trnid": [1, 5], "valid": [3, 8], "tstid": [2, 4, 6, 7, 9]}
    for i in range(1, len(labels) + 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", i)
    # 1 x N arrays, as in the official .mat files.
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})

    def rows(ids: list[int]) -> list[tuple[str, str]]:
        jpg = base / "jpg"
        return [
            (str(jpg / f"image_{i:05d}.jpg"), Flowers102.classes[labels[i - 1] - 1]) for i in ids
        ]

    return {"train": rows(setid["trnid"] + setid["valid"]), "test": rows(setid["tstid"])}


def make_pets(root: Path) -> Expected:
    base = root / "oxford-iiit-pet"
    names = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"]
    nice = ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    splits = {"trainval": [(0, 100), (1, 10), (0, 101), (2, 3)], "test": [(1, 11), (2, 4), (0, 7)]}
    out: Expected = {}
    for split, entries in splits.items():
        lines, rows = [], []
        for c, n in entries:
            image_id = f"{names[c]}_{n}"
            species = 1 if names[c][0].isupper() else 2  # cats are capitalised in the real set
            lines.append(f"{image_id} {c + 1} {species} {n}")
            rows.append((write_image(base / "images" / f"{image_id}.jpg", n), nice[c]))
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out["train" if split == "trainval" else "test"] = rows
    return out


def _class_lists(root: Path, image_dir: Path, lists: dict[str, list[str]]) -> dict[str, list]:
    """Write list files of "class/file.jpg" lines (and the images); return rows per list."""
    out, k = {}, 0
    for list_name, lines in lists.items():
        (root / list_name).parent.mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("\n".join(lines) + "\n")
        out[list_name] = []
        for line in lines:
            k += 1
            out[list_name].append(
                (write_image(image_dir / line, k, rgb=k % 3 != 0), line.split("/")[0])
            )
    return out


def make_dtd(root: Path) -> Expected:
    base = root / "dtd" / "dtd"
    lists = {
        "labels/train1.txt": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0001.jpg"],
        "labels/val1.txt": ["braided/braided_0001.jpg", "banded/banded_0002.jpg"],
        "labels/test1.txt": [  # every class in every list, as in the real set
            "zigzagged/zigzagged_0002.jpg",
            "braided/braided_0002.jpg",
            "banded/banded_0003.jpg",
        ],
        "labels/train2.txt": ["banded/banded_0002.jpg"],  # another partition: must be ignored
    }
    rows = _class_lists(base, base / "images", lists)
    return {
        "train": rows["labels/train1.txt"] + rows["labels/val1.txt"],
        "test": rows["labels/test1.txt"],
    }


def make_indoor67(root: Path) -> Expected:
    lists = {
        "TrainImages.txt": ["kitchen/int474.jpg", "bar/bar_0001.jpg", "kitchen/kitchen_12.jpg"],
        "TestImages.txt": ["bar/bar_0002.jpg", "kitchen/int475.jpg"],
    }
    rows = _class_lists(root, root / "Images", lists)
    return {"train": rows["TrainImages.txt"], "test": rows["TestImages.txt"]}


def make_aircraft(root: Path) -> Expected:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    splits = {
        "trainval": [("1025794", "Cessna 172"), ("0034309", "707-320"), ("1340192", "A300B4")],
        "test": [("0062765", "A300B4"), ("1514522", "Cessna 172")],
    }
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    out: Expected = {}
    for split, entries in splits.items():
        lines = [f"{image_id} {variant}" for image_id, variant in entries]
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        rows = [(write_image(data / "images" / f"{i}.jpg", int(i) % 1000), v) for i, v in entries]
        out["train" if split == "trainval" else "test"] = rows
    return out


def make_stanford_cars(root: Path) -> Expected:
    """The files torchvision 0.29's StanfordCars reads, with the same .mat structure."""
    savemat = pytest.importorskip("scipy.io").savemat  # .mat layouts need scipy

    base = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012"]
    splits = {
        "train": ("devkit/cars_train_annos.mat", "cars_train", [3, 1, 2, 1]),
        "test": ("cars_test_annos_withlabels.mat", "cars_test", [2, 3, 1]),
    }
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    out: Expected = {}
    for split, (mat_name, folder, classes) in splits.items():
        annotations = np.empty((1, len(classes)), dtype=[(f, "O") for f in fields])
        rows = []
        for j, c in enumerate(classes):
            fname = (
                f"{j + 1:05d}.jpg"  # the same names in cars_train and cars_test, as in the real set
            )
            rows.append((write_image(base / folder / fname, 40 * j + c), names[c - 1]))
            box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 30, 25)]
            annotations[0, j] = (*box, np.array([[c]], dtype=np.uint8), np.array([fname]))
        savemat(base / mat_name, {"annotations": annotations})
        out[split] = rows
    return out


def make_cub200(root: Path) -> Expected:
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    # image id -> (1-based class, is_train)
    images = {1: (1, 1), 2: (1, 0), 3: (2, 1), 4: (3, 0), 5: (3, 1), 6: (2, 0), 7: (1, 1)}
    out: Expected = {"train": [], "test": []}
    lines: dict[str, list[str]] = {"images": [], "labels": [], "split": []}
    for image_id, (c, is_train) in images.items():
        rel = f"{classes[c - 1]}/{classes[c - 1][4:]}_{image_id:04d}_{100 + image_id}.jpg"
        path = write_image(base / "images" / rel, 50 + image_id)
        out["train" if is_train else "test"].append((path, classes[c - 1]))
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {c}")
        lines["split"].append(f"{image_id} {is_train}")
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (base / "classes.txt").write_text(
        "\n".join(f"{i} {c}" for i, c in enumerate(classes, 1)) + "\n"
    )
    return out
