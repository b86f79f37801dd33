"""data=clipart: the seeded per-class draw from openclipart-png's category folders, on a fixture
tree (the package itself is not needed), and its errors."""

import numpy as np
import pytest
from PIL import Image

from idmm.data import clipart
from idmm.data.sources import DataError, open_source


def _tree(root, per_class=7, big=False):
    rng = np.random.default_rng(0)
    for name in clipart.CLASSES:
        for i in range(per_class):
            sub = root / name / ("nested" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            rgba = rng.integers(0, 255, (12 + i, 16, 4), dtype=np.uint8)
            Image.fromarray(rgba, "RGBA").save(sub / f"{name}_{i}.png")
        (root / name / "broken.png").write_bytes(b"not a png")
    if big:  # a header over the size limit: never drawn, never decoded
        Image.new("1", (2100, 2100)).save(root / "animals" / "huge.png")
    return root


def test_draw_is_seeded_disjoint_and_skips_unusable_files(tmp_path):
    root = _tree(tmp_path / "png", big=True)
    train = clipart.open_clipart(str(root), "train", train=4, test=2)
    test = clipart.open_clipart(str(root), "test", train=4, test=2)
    assert len(train) == 32 and len(test) == 16 and train.classes == list(clipart.CLASSES)
    assert not set(train.items) & set(test.items)
    assert train.labels == [c for c in range(8) for _ in range(4)]
    drawn = train.items + test.items
    assert not any(p.endswith(("broken.png", "huge.png")) for p in drawn)
    assert any("/nested/" in p for p in drawn)  # sub-folders count
    again = clipart.open_clipart(str(root), "train", train=4, test=2)
    assert again.items == train.items  # the same draw every time
    assert train.load(0).mode == "RGB"  # transparency composited like every idmm image


def test_too_few_images_and_missing_folders_are_named(tmp_path):
    root = _tree(tmp_path / "png", per_class=3)
    with pytest.raises(DataError, match=r"animals has 3 usable PNG files; data=clipart draws 300"):
        open_source("clipart", "train", str(root))
    (root / "food" / "broken.png").unlink()
    for p in (root / "food").rglob("*"):
        p.unlink() if p.is_file() else None
    for d in sorted((root / "food").rglob("*"), reverse=True):
        d.rmdir()
    (root / "food").rmdir()
    with pytest.raises(DataError, match="lacks the clip-art categories food"):
        open_source("clipart", "train", str(root))
    with pytest.raises(DataError, match="apt-get install openclipart-png"):
        open_source("clipart", "train", str(tmp_path / "nowhere"))
