"""Named on-disk dataset layouts: where each dataset's images and annotation files live.

Covers flowers102, oxford-iiit-pet, dtd, fgvc-aircraft, stanford-cars, cub200 and indoor67,
laid out as torchvision (or the dataset's authors) lay them out.

`LAYOUTS` describes what data.root must contain for each name; `OPENERS` maps each name to
a function (root, split) -> Source. Use them through `idmm.data.sources.open_source`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from idmm.data.base import DataError, Source, _check_files_exist, _inside


def _need_file(path: str, dataset: str) -> str:
    if not os.path.isfile(path):
        raise DataError(
            f"{dataset}: missing annotation file {path}; data.root must contain {LAYOUTS[dataset]}"
        )
    return path


def _parse_lines(path: str, parse: Callable[[str], tuple]) -> list[tuple]:
    """`parse` every non-blank line; a malformed line is reported with its file and number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(parse(line.strip()))
                except (ValueError, IndexError) as error:
                    raise DataError(
                        f"{path} line {number}: cannot parse {line.strip()!r} ({error}); "
                        "replace the file with the dataset's original"
                    ) from error
    return rows


def _load_mat(path: str, dataset: str) -> dict:
    try:
        from scipy.io import loadmat  # what torchvision uses for these .mat files too
    except ImportError as error:
        raise DataError(
            f"{dataset} stores labels in .mat files, which need scipy: pip install scipy"
        ) from error
    return loadmat(_need_file(path, dataset), squeeze_me=True)


def _mat_field(mat: dict, key: str, path: str) -> np.ndarray:
    if key not in mat:
        raise DataError(f"{path} has no field {key!r}; replace it with the dataset's original file")
    return np.atleast_1d(mat[key])  # squeeze_me turns a one-element array into a scalar


def _labelled(
    dataset: str, split: str, base: str, items: list[str], labels: list[int], classes: list[str]
) -> Source:
    """Validate what an annotation file produced, then wrap it in a Source."""
    items = [os.path.normpath(p) for p in items]
    outside = [p for p in items if not _inside(base, p)]
    if outside:  # annotation files are data too: never let them point anywhere on disk
        raise DataError(f"{dataset}: annotations under {base} point outside it, e.g. {outside[0]}")
    if not items:
        raise DataError(f"{dataset}: the {split} annotations under {base} list no images")
    bad = [label for label in labels if not 0 <= label < len(classes)]
    if bad:
        raise DataError(
            f"{dataset}: label {bad[0]} (0-based) under {base} is not one of {len(classes)} classes"
        )
    _check_files_exist(items, f"the {dataset} annotations under {base}")
    return Source(dataset, split, items, labels, classes)


def _open_flowers102(root: str, split: str) -> Source:
    from torchvision.datasets import Flowers102  # only for its list of the 102 flower names

    base = os.path.join(root, "flowers-102")
    setid_path, labels_path = os.path.join(base, "setid.mat"), os.path.join(base, "imagelabels.mat")
    setid = _load_mat(setid_path, "flowers102")
    keys = ("trnid", "valid") if split == "train" else ("tstid",)  # paper: train on train+val
    ids = [int(i) for key in keys for i in _mat_field(setid, key, setid_path)]
    per_image = _mat_field(_load_mat(labels_path, "flowers102"), "labels", labels_path)
    if ids and not (min(ids) >= 1 and max(ids) <= len(per_image)):
        raise DataError(f"{setid_path} has image ids outside 1..{len(per_image)} of {labels_path}")
    items = [os.path.join(base, "jpg", f"image_{i:05d}.jpg") for i in ids]
    labels = [int(per_image[i - 1]) - 1 for i in ids]  # ids and labels are 1-based in the .mat
    return _labelled("flowers102", split, base, items, labels, list(Flowers102.classes))


def _pet_row(line: str) -> tuple[str, int]:
    image_id, class_id = line.split()[:2]  # "Abyssinian_100 1 1 1": class id is 1-based
    return image_id, int(class_id) - 1


def _open_pets(root: str, split: str) -> Source:
    base = os.path.join(root, "oxford-iiit-pet")
    names = {"train": "trainval.txt", "test": "test.txt"}
    rows = _parse_lines(
        _need_file(os.path.join(base, "annotations", names[split]), "oxford-iiit-pet"), _pet_row
    )
    # Name classes from both split files so train and test agree on every index.
    raw_names: dict[int, str] = {}
    for path in (os.path.join(base, "annotations", n) for n in names.values()):
        for image_id, label in _parse_lines(path, _pet_row) if os.path.isfile(path) else []:
            raw_names.setdefault(label, image_id.rsplit("_", 1)[0])
    # torchvision's naming: "american_pit_bull_terrier_12" -> "American Pit Bull Terrier".
    classes = [
        " ".join(w.title() for w in raw_names.get(k, str(k + 1)).split("_"))
        for k in range(max(raw_names, default=-1) + 1)
    ]
    items = [os.path.join(base, "images", f"{image_id}.jpg") for image_id, _ in rows]
    return _labelled("oxford-iiit-pet", split, base, items, [label for _, label in rows], classes)


def _class_and_file(line: str) -> tuple[str, str]:
    cls, name = line.split("/")  # "banded/banded_0002.jpg"; anything else is malformed
    return cls, name


def _open_class_lists(
    dataset: str, split: str, base: str, image_dir: str, split_lists: dict[str, tuple[str, ...]]
) -> Source:
    """Datasets whose list files hold lines "class/file.jpg" relative to `image_dir`."""
    rows = [
        row
        for name in split_lists[split]
        for row in _parse_lines(_need_file(os.path.join(base, name), dataset), _class_and_file)
    ]
    # Classes from every list file, so train and test agree on every index.
    all_lists = [os.path.join(base, n) for names in split_lists.values() for n in names]
    classes = sorted(
        {c for p in all_lists if os.path.isfile(p) for c, _ in _parse_lines(p, _class_and_file)}
    )
    index = {c: i for i, c in enumerate(classes)}
    items = [os.path.join(image_dir, c, name) for c, name in rows]
    return _labelled(dataset, split, base, items, [index[c] for c, _ in rows], classes)


def _open_dtd(root: str, split: str) -> Source:
    base = os.path.join(root, "dtd", "dtd")
    lists = {"train": ("labels/train1.txt", "labels/val1.txt"), "test": ("labels/test1.txt",)}
    return _open_class_lists("dtd", split, base, os.path.join(base, "images"), lists)


def _open_indoor67(root: str, split: str) -> Source:
    lists = {"train": ("TrainImages.txt",), "test": ("TestImages.txt",)}
    return _open_class_lists("indoor67", split, root, os.path.join(root, "Images"), lists)


def _aircraft_row(line: str) -> tuple[str, str]:
    image_id, variant = line.split(" ", 1)  # "1025794 707-320"; variant names may hold spaces
    return image_id, variant


def _open_aircraft(root: str, split: str) -> Source:
    dataset, data = "fgvc-aircraft", os.path.join(root, "fgvc-aircraft-2013b", "data")
    variants = _need_file(os.path.join(data, "variants.txt"), dataset)
    classes = [line for (line,) in _parse_lines(variants, lambda s: (s,))]
    part = "trainval" if split == "train" else "test"
    list_file = _need_file(os.path.join(data, f"images_variant_{part}.txt"), dataset)
    rows = _parse_lines(list_file, _aircraft_row)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [variant for _, variant in rows if variant not in index]
    if unknown:
        raise DataError(f"{list_file}: variant {unknown[0]!r} is not listed in {variants}")
    items = [os.path.join(data, "images", f"{image_id}.jpg") for image_id, _ in rows]
    return _labelled(dataset, split, data, items, [index[v] for _, v in rows], classes)


def _open_cars(root: str, split: str) -> Source:
    dataset, base = "stanford-cars", os.path.join(root, "stanford_cars")
    # The same files torchvision.datasets.StanfordCars reads.
    mat_name, image_dir = {
        "train": ("devkit/cars_train_annos.mat", "cars_train"),
        "test": ("cars_test_annos_withlabels.mat", "cars_test"),
    }[split]
    mat_path = os.path.join(base, mat_name)
    annotations = _mat_field(_load_mat(mat_path, dataset), "annotations", mat_path)
    meta_path = os.path.join(base, "devkit", "cars_meta.mat")
    classes = [str(c) for c in _mat_field(_load_mat(meta_path, dataset), "class_names", meta_path)]
    try:
        items = [os.path.join(base, image_dir, str(a["fname"])) for a in annotations]
        labels = [int(a["class"]) - 1 for a in annotations]  # 1-based in the .mat
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise DataError(f"{mat_path}: no 'fname'/'class' annotations ({error})") from error
    return _labelled(dataset, split, base, items, labels, classes)


def _id_and(convert: Callable[[str], object]) -> Callable[[str], tuple]:
    """Parser for CUB's "<image id> <value>" lines."""
    return lambda line: (int(line.split(maxsplit=1)[0]), convert(line.split(maxsplit=1)[1]))


def _open_cub(root: str, split: str) -> Source:
    base = os.path.join(root, "CUB_200_2011")

    def table(name: str, convert: Callable[[str], object]) -> dict:
        return dict(_parse_lines(_need_file(os.path.join(base, name), "cub200"), _id_and(convert)))

    paths = table("images.txt", str)
    labels = table("image_class_labels.txt", lambda v: int(v) - 1)  # 1-based in the file
    is_train = table("train_test_split.txt", lambda v: int(v) == 1)
    classes = [name for _, name in sorted(table("classes.txt", str).items())]
    ids = sorted(i for i, train in is_train.items() if train == (split == "train"))
    unknown = [i for i in ids if i not in paths or i not in labels]
    if unknown:
        raise DataError(
            f"cub200: image id {unknown[0]} of train_test_split.txt is missing from "
            f"images.txt or image_class_labels.txt under {base}"
        )
    items = [os.path.join(base, "images", paths[i]) for i in ids]
    return _labelled("cub200", split, base, items, [labels[i] for i in ids], classes)


LAYOUTS = {
    "flowers102": "flowers-102/ with jpg/image_00001.jpg..., imagelabels.mat and setid.mat "
    "(torchvision Flowers102 layout)",
    "oxford-iiit-pet": "oxford-iiit-pet/ with images/*.jpg, annotations/trainval.txt and "
    "annotations/test.txt (torchvision OxfordIIITPet layout)",
    "dtd": "dtd/dtd/ with images/<class>/*.jpg and labels/train1.txt, val1.txt, test1.txt "
    "(torchvision DTD layout)",
    "fgvc-aircraft": "fgvc-aircraft-2013b/data/ with images/<id>.jpg, variants.txt, "
    "images_variant_trainval.txt and images_variant_test.txt (torchvision FGVCAircraft layout)",
    "stanford-cars": "stanford_cars/ with cars_train/, cars_test/, devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat (torchvision StanfordCars)",
    "cub200": "CUB_200_2011/ with images/<class>/*.jpg, images.txt, image_class_labels.txt, "
    "train_test_split.txt and classes.txt",
    "indoor67": "Images/<class>/*.jpg, TrainImages.txt and TestImages.txt (MIT Indoor67)",
}
OPENERS: dict[str, Callable[[str, str], Source]] = {
    "flowers102": _open_flowers102,
    "oxford-iiit-pet": _open_pets,
    "dtd": _open_dtd,
    "fgvc-aircraft": _open_aircraft,
    "stanford-cars": _open_cars,
    "cub200": _open_cub,
    "indoor67": _open_indoor67,
}
