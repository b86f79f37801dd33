"""Tests for idmm.data.sources: every layout, built in tmp_path from real Fashion-MNIST pixels."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from collections import Counter

import numpy as np
import pytest
from fixtures_data import (
    FMNIST_DIR,
    make_aircraft,
    make_class_folder,
    make_cub200,
    make_dtd,
    make_flowers102,
    make_indoor67,
    make_pets,
    make_stanford_cars,
    needs_fmnist,
    pairs,
    write_image,
)

from idmm.data import sources
from idmm.data.sources import DataError, open_source, subset_per_class

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def fmnist_train():
    return open_source("fashion-mnist", "train")


# --------------------------------------------------------------------------- folders


def test_class_folders(tmp_path):
    expected = make_class_folder(tmp_path, {"shirt": 2, "bag": 3, "coat": 1})
    write_image(tmp_path / "bag" / "nested" / "deeper" / "x.PNG", 40)  # recursive, any case
    write_image(tmp_path / "coat" / "IMG_1.JPEG", 41)
    (tmp_path / "bag" / "notes.txt").write_text("not an image")
    (tmp_path / "bag" / "._bag_0.jpg").write_bytes(b"macOS resource fork")
    src = open_source(str(tmp_path))
    assert src.name == f"folder:{tmp_path}" and src.split == "train"
    assert src.classes == ["bag", "coat", "shirt"]
    want = sorted(expected + [(str(tmp_path / "bag/nested/deeper/x.PNG"), "bag")])
    want = sorted(want + [(str(tmp_path / "coat/IMG_1.JPEG"), "coat")])
    assert pairs(src) == want
    assert src.describe(0) == src.items[0]
    assert open_source(str(tmp_path), "test") is None  # no test sub-folder: no test split


def test_empty_class_folder_warns_and_is_ignored(tmp_path):
    make_class_folder(tmp_path, {"bag": 1, "coat": 1})
    (tmp_path / "empty_class").mkdir()
    with pytest.warns(UserWarning, match="empty_class"):
        src = open_source(str(tmp_path))
    assert src.classes == ["bag", "coat"]


def test_flat_folder_is_unlabelled(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", i) for i in range(3)]
    src = open_source(str(tmp_path))
    assert src.labels is None and src.classes == [] and src.items == sorted(paths)
    assert src.load(0).mode == "RGB"


def test_train_and_test_subfolders(tmp_path):
    train = make_class_folder(tmp_path / "train", {"a": 2, "b": 1})
    test = make_class_folder(tmp_path / "test", {"a": 1, "b": 1}, first=10)
    make_class_folder(tmp_path / "val", {"a": 1}, first=20)  # test is preferred over val
    assert pairs(open_source(str(tmp_path))) == train
    assert pairs(open_source(str(tmp_path), "test")) == test
    shutil.rmtree(tmp_path / "test")
    assert len(open_source(str(tmp_path), "test")) == 1  # falls back to val
    shutil.rmtree(tmp_path / "val")
    assert open_source(str(tmp_path), "test") is None


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=f"no images found under {tmp_path}"):
        open_source(str(tmp_path))


def test_symlink_loop_does_not_hang(tmp_path):
    make_class_folder(tmp_path, {"bag": 2})
    os.symlink(tmp_path, tmp_path / "bag" / "loop")  # bag/loop -> root -> bag/loop -> ...
    assert len(open_source(str(tmp_path))) == 2


def test_missing_path_and_bad_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="split"):
        open_source(str(tmp_path), "val")


# --------------------------------------------------------------------------- CSV


def _csv(path, rows, header=True):
    path.write_text(
        ("path,label\n" if header else "") + "".join(f"{p},{label}\n" for p, label in rows)
    )
    return str(path)


def test_csv_relative_paths_and_header(tmp_path):
    a = write_image(tmp_path / "img" / "a.jpg", 1)
    b = write_image(tmp_path / "img" / "b.png", 2)
    c = write_image(tmp_path / "c.jpg", 3)
    spec = _csv(
        tmp_path / "data.csv", [("img/a.jpg", "dog"), ("img/b.png", "cat"), ("c.jpg", "dog")]
    )
    src = open_source(spec)
    assert src.classes == ["cat", "dog"]
    assert pairs(src) == [(a, "dog"), (b, "cat"), (c, "dog")]
    assert open_source(spec, "test") is None
    no_header = _csv(tmp_path / "n.csv", [("c.jpg", "10"), ("img/a.jpg", "9")], header=False)
    assert open_source(no_header).classes == ["9", "10"]  # numeric labels sort as numbers


def test_csv_train_and_test(tmp_path):
    write_image(tmp_path / "a.jpg", 1)
    write_image(tmp_path / "b.jpg", 2)
    train = _csv(tmp_path / "train.csv", [("a.jpg", "x")])
    _csv(tmp_path / "test.csv", [("b.jpg", "x"), ("a.jpg", "y")])
    assert len(open_source(train)) == 1
    assert len(open_source(train, "test")) == 2


def test_csv_missing_files(tmp_path):
    write_image(tmp_path / "a.jpg", 1)
    rows = [("a.jpg", "x")] + [(f"gone{i}.jpg", "x") for i in range(7)]
    with pytest.raises(DataError, match=r"7 of 8 images") as info:
        open_source(_csv(tmp_path / "d.csv", rows))
    assert str(tmp_path / "gone0.jpg") in str(info.value)


def test_csv_rejects_paths_outside_its_folder(tmp_path):
    write_image(tmp_path / "secret.jpg", 1)
    (tmp_path / "sub").mkdir()
    for bad in ("../secret.jpg", str(tmp_path / "secret.jpg")):
        with pytest.raises(DataError, match="line 2: path .* points outside"):
            open_source(_csv(tmp_path / "sub" / "d.csv", [(bad, "x")]))


def test_csv_empty_label(tmp_path):
    write_image(tmp_path / "a.jpg", 1)
    with pytest.raises(DataError, match="line 2"):
        open_source(_csv(tmp_path / "d.csv", [("a.jpg", "")]))


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist(fmnist_train):
    from torchvision.datasets import FashionMNIST

    test = open_source("fmnist", "test")
    assert (len(fmnist_train), len(test)) == (60_000, 10_000)
    assert fmnist_train.classes == FashionMNIST.classes == test.classes
    assert fmnist_train.array.shape == (60_000, 28, 28) and fmnist_train.array.dtype == np.uint8
    assert set(Counter(fmnist_train.labels).values()) == {6000}
    assert set(Counter(test.labels).values()) == {1000}
    assert fmnist_train.items[:3] == [0, 1, 2] and fmnist_train.labels[:3] == [9, 0, 0]
    assert fmnist_train.describe(123) == "fashion-mnist[train][123]"
    image = fmnist_train.load(0)
    assert image.mode == "RGB" and image.size == (28, 28)


def test_fmnist_2040(fmnist_train):
    sub = subset_per_class(fmnist_train, 204, seed=0)
    assert len(sub) == 2040 and set(Counter(sub.labels).values()) == {204}
    assert sub.items == sorted(sub.items) and sub.array is fmnist_train.array
    assert all(fmnist_train.labels[i] == label for i, label in zip(sub.items, sub.labels))
    assert subset_per_class(fmnist_train, 204, seed=0).items == sub.items
    assert subset_per_class(fmnist_train, 204, seed=1).items != sub.items


def test_subset_per_class_errors(tmp_path, fmnist_train):
    with pytest.raises(DataError, match="class 'T-shirt/top' has only 6000 images"):
        subset_per_class(fmnist_train, 6001)
    write_image(tmp_path / "a.jpg", 1)
    with pytest.raises(DataError, match="unlabelled"):
        subset_per_class(open_source(str(tmp_path)), 1)


def test_fashion_mnist_root_layouts(tmp_path, fmnist_train):
    reference = open_source("fashion-mnist", "test")
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # unzipped, flat
        with gzip.open(os.path.join(FMNIST_DIR, stem + ".gz")) as f:
            (tmp_path / stem).write_bytes(f.read())
        raw = tmp_path / "tv" / "FashionMNIST" / "raw"  # torchvision's layout, gzipped
        raw.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join(FMNIST_DIR, stem + ".gz"), raw / (stem + ".gz"))
    for root in (tmp_path, tmp_path / "tv"):
        src = open_source("fashion-mnist", "test", root=str(root))
        assert np.array_equal(src.array, reference.array) and src.labels == reference.labels
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        open_source("fashion-mnist", "train", root=str(tmp_path))  # only t10k there


def test_fashion_mnist_bad_magic(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 20)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file of 3-d"):
        open_source("fashion-mnist", "test", root=str(tmp_path))


def test_fashion_mnist_download_failure(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(sources, "FASHION_MNIST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.root=DIR"):
        open_source("fashion-mnist")


# --------------------------------------------------------------------------- named datasets


NAMED = {
    "flowers102": make_flowers102,
    "oxford-iiit-pet": make_pets,
    "dtd": make_dtd,
    "fgvc-aircraft": make_aircraft,
    "stanford-cars": make_stanford_cars,
    "cub200": make_cub200,
    "indoor67": make_indoor67,
}


@pytest.mark.parametrize("name", NAMED)
def test_named_layout(tmp_path, name):
    expected = NAMED[name](tmp_path)
    for split in ("train", "test"):
        src = open_source(name, split, root=str(tmp_path))
        assert (src.name, src.split) == (name, split)
        assert pairs(src) == expected[split]
        assert src.load(len(src) - 1).mode == "RGB"
    train, test = (open_source(name, s, root=str(tmp_path)) for s in ("train", "test"))
    assert train.classes == test.classes  # one label index means one class in both splits


def _torchvision_dataset(name, root, split):
    import torchvision.datasets as tvd

    return {
        "oxford-iiit-pet": lambda: tvd.OxfordIIITPet(
            root, "trainval" if split == "train" else "test"
        ),
        "dtd": lambda: tvd.DTD(root, split),  # torchvision "train" is train1 only; compare test
        "fgvc-aircraft": lambda: tvd.FGVCAircraft(root, "trainval" if split == "train" else "test"),
        "stanford-cars": lambda: tvd.StanfordCars(root, split),
    }[name]()


@pytest.mark.parametrize(
    "name, split",
    [
        ("oxford-iiit-pet", "train"),
        ("dtd", "test"),
        ("fgvc-aircraft", "train"),
        ("fgvc-aircraft", "test"),
        ("stanford-cars", "train"),
        ("stanford-cars", "test"),
    ],
)
def test_named_layout_matches_torchvision(tmp_path, name, split):
    NAMED[name](tmp_path)
    ours = open_source(name, split, root=str(tmp_path))
    theirs = _torchvision_dataset(name, str(tmp_path), split)
    assert len(ours) == len(theirs) and ours.classes == theirs.classes
    for i in range(len(ours)):
        image, label = theirs[i]
        assert label == ours.labels[i]
        assert np.array_equal(np.asarray(image), np.asarray(ours.load(i)))


def test_named_dataset_needs_root():
    with pytest.raises(DataError, match=r"dataset dtd needs data.root=DIR containing dtd/dtd/"):
        open_source("dtd")


def test_named_dataset_missing_annotation_file(tmp_path):
    make_dtd(tmp_path)
    missing = tmp_path / "dtd" / "dtd" / "labels" / "test1.txt"
    missing.unlink()
    with pytest.raises(DataError, match=f"missing annotation file {missing}"):
        open_source("dtd", "test", root=str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "CUB_200_2011" / "images.txt")):
        open_source("cub200", root=str(tmp_path))


def test_named_dataset_malformed_line(tmp_path):
    make_pets(tmp_path)
    (tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt").write_text("Abyssinian_1 one 1 1\n")
    with pytest.raises(DataError, match="test.txt line 1: cannot parse"):
        open_source("oxford-iiit-pet", "test", root=str(tmp_path))


def test_named_dataset_missing_image(tmp_path):
    expected = make_indoor67(tmp_path)
    os.remove(expected["test"][0][0])
    with pytest.raises(DataError, match="1 of 2 images") as info:
        open_source("indoor67", "test", root=str(tmp_path))
    assert expected["test"][0][0] in str(info.value)


def test_mat_datasets_need_scipy(tmp_path, monkeypatch):
    make_flowers102(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` fail
    with pytest.raises(DataError, match="pip install scipy"):
        open_source("flowers102", root=str(tmp_path))


def test_unknown_name_has_hint():
    with pytest.raises(DataError, match=r"'flower102' \(did you mean 'flowers102'\?\)") as info:
        open_source("flower102")
    for name in ("fashion-mnist", "fmnist", "cub200", "indoor67", "stanford-cars"):
        assert name in str(info.value)


def test_builtin_small_datasets():
    """sklearn-digits: a fixed stratified 80/20 split of the 1,797 digits, disjoint and
    complete; fmnist-2040: 204 images per class, the full test split."""
    train, test = open_source("sklearn-digits", "train"), open_source("digits", "test")
    assert len(train) + len(test) == 1797 and not set(train.items) & set(test.items)
    assert sorted(set(test.labels)) == list(range(10)) and len(test) == 355
    img = train.load(0)
    assert img.size == (8, 8) and img.mode == "RGB" and np.asarray(img).max() > 200
    fm = open_source("fmnist-2040", "train")
    assert len(fm) == 2040 and all(fm.labels.count(c) == 204 for c in range(10))
    assert fm.items == subset_per_class(open_source("fashion-mnist"), 204, seed=0).items
    assert len(open_source("fmnist2040", "test")) == 10000
