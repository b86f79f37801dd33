"""Tests for idmm.data.cache: decoding, resizing, odd image modes and bad files."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fixtures_data import fmnist_test, make_class_folder, needs_fmnist, pixels, write_image
from PIL import Image

from idmm.data.cache import build_cache
from idmm.data.sources import DataError, Source, open_source

pytestmark = needs_fmnist


def _folder(path) -> Source:
    return open_source(str(path))


def test_shapes_dtype_labels(tmp_path):
    make_class_folder(tmp_path, {"bag": 3, "coat": 2})
    src = _folder(tmp_path)
    data = build_cache(src, 24, progress=True)
    assert data.images.shape == (5, 3, 24, 24) and data.images.dtype == torch.uint8
    assert data.images.is_contiguous() and len(data) == 5
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert (data.classes, data.size, data.source_name) == (["bag", "coat"], 24, src.name)
    assert data.kept == [0, 1, 2, 3, 4]


def test_resize_shorter_side_then_centre_crop(tmp_path):
    path = write_image(tmp_path / "a.png", 7)  # 36 x 30 (W x H), lossless
    data = build_cache(_folder(tmp_path), 24)
    # Independent reference with plain PIL: 30 -> 24 makes 36 -> int(28.8) = 28; crop x 2..26.
    want = Image.open(path).resize((28, 24), Image.BICUBIC).crop((2, 0, 26, 24))
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), np.asarray(want))
    assert data.labels is None  # flat folder


def test_array_path_matches_file_path(tmp_path):
    fmnist = fmnist_test()
    sub = Source(
        "fashion-mnist", "test", list(range(16)), fmnist.labels[:16], fmnist.classes, fmnist.array
    )
    for i in range(16):
        Image.fromarray(fmnist.array[i]).save(tmp_path / f"{i:02d}.png")
    from_array, from_files = build_cache(sub, 40), build_cache(_folder(tmp_path), 40)
    # torch's uint8 bicubic and PIL's agree to rounding.
    diff = (from_array.images.int() - from_files.images.int()).abs()
    assert diff.max() <= 1, diff.max()
    same = build_cache(sub, 28).images  # native size: the pixels, untouched, on 3 channels
    assert torch.equal(same, torch.from_numpy(fmnist.array[:16]).unsqueeze(1).expand(-1, 3, -1, -1))


def test_full_fashion_mnist_is_fast():
    src = open_source("fashion-mnist", "train")
    start = time.perf_counter()
    data = build_cache(src, 28)
    assert time.perf_counter() - start < 2.0
    assert data.images.shape == (60_000, 3, 28, 28) and data.labels.shape == (60_000,)


def test_grayscale_file_gives_identical_channels(tmp_path):
    write_image(tmp_path / "gray.jpg", 3, rgb=False)
    image = build_cache(_folder(tmp_path), 16).images[0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image.float().std() > 10  # real content, not a blank image


def _bad_files(folder):
    good = write_image(folder / "good.jpg", 1)
    truncated = folder / "truncated.jpg"
    write_image(truncated, 2)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    return good, [str(folder / n) for n in ("empty.jpg", "notes.jpg", "truncated.jpg")]


def test_bad_files_are_listed(tmp_path):
    make_class_folder(tmp_path, {"bag": 2, "coat": 2})
    _, bad = _bad_files(tmp_path / "bag")
    with pytest.raises(DataError, match="3 of 8 images") as info:
        build_cache(_folder(tmp_path), 16)
    message = str(info.value)
    assert all(path in message for path in bad)
    assert "fix or remove them, or set data.skip_bad=true" in message


def test_skip_bad_warns_and_keeps_the_rest(tmp_path):
    make_class_folder(tmp_path, {"bag": 2, "coat": 2})
    _bad_files(tmp_path / "bag")
    src = _folder(tmp_path)
    with pytest.warns(UserWarning, match="3 of 8 images") as record:
        data = build_cache(src, 16, skip_bad=True)
    assert "empty.jpg" in str(record[0].message)
    assert len(data) == 5 and data.images.shape == (5, 3, 16, 16)
    names = [src.items[i].rsplit("/", 1)[1] for i in data.kept]
    assert names == ["bag_0.jpg", "bag_1.jpg", "good.jpg", "coat_0.jpg", "coat_1.jpg"]
    assert data.labels.tolist() == [src.labels[i] for i in data.kept]
    for j, i in enumerate(data.kept):  # each kept image is the right one
        single = Source("x", "train", [src.items[i]], None, [])
        assert torch.equal(data.images[j], build_cache(single, 16).images[0])


def test_many_bad_files_are_summarised(tmp_path):
    write_image(tmp_path / "good.png", 1)
    for i in range(22):
        (tmp_path / f"bad{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"22 of 23 images[\s\S]*\.\.\. and 2 more"):
        build_cache(_folder(tmp_path), 8)
    with pytest.raises(DataError, match="no image is left"):
        build_cache(Source("x", "train", [str(tmp_path / "bad00.png")], None, []), 8, skip_bad=True)


def test_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 36 x 30 > 2 x 100: refused
    with pytest.raises(DataError, match="DecompressionBombError"):
        build_cache(_folder(tmp_path), 8)


def test_exif_rotated_photo_is_upright(tmp_path):
    upright = pixels(0)  # an ankle boot: no symmetry, 36 wide x 30 high
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95, subsampling=0)
    src = _folder(tmp_path)
    loaded = np.asarray(src.load(0)).astype(int)
    assert loaded.shape == upright.shape
    assert np.abs(loaded - upright).mean() < 4  # JPEG noise only
    assert np.abs(loaded - upright[::-1, ::-1]).mean() > 20  # not upside down


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.dstack([pixels(4), np.full((30, 36), 255, np.uint8)])
    rgba[:, :18, 3] = 0  # left half fully transparent (its colour must not show)
    rgba[:, 18:, 3] = 128  # right half half-transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    gray = Image.fromarray(pixels(4, rgb=False)).convert("LA")
    gray.putalpha(0)
    gray.save(tmp_path / "la.png")
    palette = Image.fromarray(pixels(4, rgb=False)).convert("P")
    palette.save(tmp_path / "p.png", transparency=int(np.asarray(palette)[0, 0]))
    src = _folder(tmp_path)
    loaded = {name.rsplit("/", 1)[1]: np.asarray(src.load(i)) for i, name in enumerate(src.items)}
    assert (loaded["rgba.png"][:, :18] == 255).all()
    half = rgba[:, 18:, :3].astype(int) * 128 / 255 + 255 * 127 / 255
    assert np.abs(loaded["rgba.png"][:, 18:] - half).max() <= 1
    assert (loaded["la.png"] == 255).all()
    assert (loaded["p.png"][0, 0] == 255).all() and loaded["p.png"].min() < 128


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = pixels(5, rgb=False).astype(np.uint16) * 257  # 8-bit k -> 16-bit k * 257
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = np.asarray(_folder(tmp_path).load(0))
    assert np.array_equal(loaded[..., 0], pixels(5, rgb=False))


def test_bad_arguments(tmp_path):
    write_image(tmp_path / "a.png", 1)
    with pytest.raises(DataError, match="positive integer"):
        build_cache(_folder(tmp_path), 0)
    with pytest.raises(DataError, match="has no images"):
        build_cache(Source("empty", "train", [], None, []), 8)


# -- memory-mapped cache --------------------------------------------------------------------------
def test_memmap_cache_equals_the_in_memory_one_and_is_reused(tmp_path, monkeypatch):
    make_class_folder(tmp_path / "imgs", {"a": 3, "b": 2})
    src = open_source(str(tmp_path / "imgs"))
    ram = build_cache(src, 20)
    disk = build_cache(src, 20, store=tmp_path / "cache")
    assert torch.equal(ram.images, disk.images) and torch.equal(ram.labels, disk.labels)
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob(".*tmp"))

    # a second build reads the file: no image is decoded again
    monkeypatch.setattr(Source, "load", lambda self, i: (_ for _ in ()).throw(AssertionError))
    again = build_cache(open_source(str(tmp_path / "imgs")), 20, store=tmp_path / "cache")
    assert torch.equal(again.images, ram.images)
    monkeypatch.undo()

    # a changed source gets a new file with the new pixels
    first = sorted((tmp_path / "imgs" / "a").iterdir())[0]
    time.sleep(0.01)
    write_image(first, 40)
    changed = build_cache(open_source(str(tmp_path / "imgs")), 20, store=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not torch.equal(changed.images[0], ram.images[0])


def test_memmap_cache_skips_bad_files_like_the_in_memory_one(tmp_path):
    make_class_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (tmp_path / "imgs" / "a" / "a_1.jpg").write_bytes(b"not an image")
    src = open_source(str(tmp_path / "imgs"))
    with pytest.warns(UserWarning):
        ram = build_cache(src, 16, skip_bad=True)
    with pytest.warns(UserWarning):
        disk = build_cache(src, 16, skip_bad=True, store=tmp_path / "cache")
    assert len(disk) == 5 and disk.kept == ram.kept
    assert torch.equal(disk.images, ram.images) and torch.equal(disk.labels, ram.labels)


def test_training_past_the_memory_threshold_uses_the_file(tmp_path):
    import idmm

    make_class_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    idmm.pretrain(data=str(tmp_path / "imgs"), out=str(tmp_path / "run"), model="vit_test",
                  img_size=28, epochs=1, batch_size=4, threads=2, progress="log",
                  **{"data.memmap_gb": 0.0, "data.cache_dir": str(tmp_path / "cache")})  # fmt: skip
    # the training and validation splits, each decoded once into its own file
    assert len(list((tmp_path / "cache").glob("*28px*.npy"))) == 2
    assert (tmp_path / "run" / "backbone.safetensors").is_file()
