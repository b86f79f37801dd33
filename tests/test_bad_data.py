"""A corpus of bad and odd inputs, generated here (no committed binaries), each with its defined
behaviour: a clear error naming the file, converted and used, or skipped and reported when the
user asks (data.skip_bad=true). docs/robustness.md lists them with these test names."""

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import pixels, write_image
from PIL import Image

import idmm
from idmm.builders import load_data
from idmm.data.cache import build_cache
from idmm.data.sources import DataError, open_source


def _photo(k: int = 0) -> Image.Image:
    return Image.fromarray(pixels(k, rgb=True))


def truncated_jpeg(p: Path):
    buf = io.BytesIO()
    _photo().save(buf, "JPEG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def zero_bytes(p: Path):
    p.write_bytes(b"")


def text_named_jpg(p: Path):
    p.write_text("this is not an image\n")


# name, writer, file name: each must stop the run with a DataError naming the file
BROKEN = [
    ("truncated JPEG", truncated_jpeg, "cut.jpg"),
    ("zero-byte file", zero_bytes, "empty.jpg"),
    ("text file named .jpg", text_named_jpg, "notes.jpg"),
]


def _folder_with(tmp_path: Path, name: str, writer) -> Path:
    root = tmp_path / "data"
    for c in ("a", "b"):
        for k in range(3):
            write_image(root / c / f"{k}.png", k)
    writer(root / "a" / name)
    return root


@pytest.mark.parametrize("what,writer,name", BROKEN, ids=[b[0] for b in BROKEN])
def test_unreadable_file_is_named_or_skipped(tmp_path, what, writer, name):
    root = _folder_with(tmp_path, name, writer)
    with pytest.raises(DataError, match=rf"(?s){name}.*data.skip_bad=true"):
        build_cache(open_source(str(root)), 8)
    with pytest.warns(UserWarning, match=name):
        data = build_cache(open_source(str(root)), 8, skip_bad=True)
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def cmyk_jpeg(p: Path):
    _photo().convert("CMYK").save(p, "JPEG")


def palette_gif(p: Path):
    _photo().convert("P", palette=Image.Palette.ADAPTIVE).save(p, "GIF")


def rgba_png(p: Path):
    Image.fromarray(np.dstack([pixels(0), np.full((30, 36), 128, np.uint8)])).save(p)


def png16(p: Path):
    Image.fromarray(pixels(0, rgb=False).astype(np.uint16) * 257).save(p)


def one_pixel(p: Path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(p)


def grayscale(p: Path):
    Image.fromarray(pixels(0, rgb=False)).save(p)


# name, writer, file name: each is converted to 8-bit RGB and used
CONVERTED = [
    ("CMYK JPEG", cmyk_jpeg, "cmyk.jpg"),
    ("palette GIF", palette_gif, "palette.gif"),
    ("PNG with alpha", rgba_png, "alpha.png"),
    ("16-bit PNG", png16, "deep.png"),
    ("1x1 image", one_pixel, "dot.png"),
    ("grayscale PNG", grayscale, "gray.png"),
    ("name with spaces and non-ASCII", grayscale, "vestido de sefiora ñ 日本.png"),
]


@pytest.mark.parametrize("what,writer,name", CONVERTED, ids=[c[0] for c in CONVERTED])
def test_odd_image_is_converted_and_used(tmp_path, what, writer, name):
    root = _folder_with(tmp_path, name, writer)
    src = open_source(str(root))
    data = build_cache(src, 8)
    i = src.items.index(str(root / "a" / name))
    img = data.images[i]
    assert data.images.shape == (7, 3, 8, 8) and img.float().std() >= 0
    if what == "1x1 image":  # upscaled to a flat square of its colour
        assert img[:, 0, 0].tolist() == [200, 10, 10] and (img == img[:, :1, :1]).all()
    if what == "PNG with alpha":  # half-transparent: between the pixel and white
        assert img.float().mean() > data.images[0].float().mean()


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """Over PIL's pixel limit (not only twice over it, where PIL itself stops): refused from
    the header, never decoded."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 36 * 30)  # the other images' size
    big = lambda p: Image.new("L", (40, 40)).save(p)  # noqa: E731
    root = _folder_with(tmp_path, "big.png", big)
    with pytest.raises(DataError, match=r"(?s)1 of 7 images.*big.png.*40x40 pixels is over"):
        build_cache(open_source(str(root)), 8)


def test_symlink_loop_and_empty_class_folder(tmp_path):
    root = _folder_with(tmp_path, "x.png", lambda p: write_image(p, 1))
    os.symlink(root / "a", root / "a" / "loop")
    (root / "empty").mkdir()
    with pytest.warns(UserWarning, match="empty"):
        src = open_source(str(root))
    assert src.classes == ["a", "b"] and len(src) == 7


def test_single_class_pretrains_but_cannot_be_fine_tuned(tmp_path):
    root = tmp_path / "one"
    for k in range(8):
        write_image(root / "only" / f"{k}.png", k)
    common = dict(data=str(root), model="vit_test", img_size=16, batch_size=4, epochs=1,
                  progress="log")  # fmt: skip
    idmm.pretrain(out=str(tmp_path / "pre"), **common)
    with pytest.raises(DataError, match="single class .*'only'.*at least 2"):
        idmm.finetune(out=str(tmp_path / "ft"), **common)


def _csv_dataset(tmp_path: Path, train_rows: list[str], test_rows: list[str] | None = None):
    for k in range(4):
        write_image(tmp_path / f"{k}.png", k)
    (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(train_rows) + "\n")
    if test_rows is not None:
        (tmp_path / "test.csv").write_text("path,label\n" + "\n".join(test_rows) + "\n")
    return str(tmp_path / "train.csv")


def test_csv_duplicates_are_used_once_and_conflicts_refused(tmp_path):
    path = _csv_dataset(tmp_path, ["0.png,cat", "1.png,dog", "0.png,cat", "2.png,dog"])
    with pytest.warns(UserWarning, match="1 rows repeat an image"):
        src = open_source(path)
    assert len(src) == 3
    path = _csv_dataset(tmp_path, ["0.png,cat", "1.png,dog", "0.png,dog"])
    with pytest.raises(DataError, match=r"0.png is listed with two labels, 'cat' and 'dog'"):
        open_source(path)


def test_test_split_with_an_unknown_label_is_refused(tmp_path):
    """The test split's labels are matched to the training classes by name: a label the
    training data lacks is an error, and a test split without some class still lines up."""
    path = _csv_dataset(tmp_path, ["0.png,cat", "1.png,dog", "2.png,eel"], ["3.png,eel"])
    cfg = idmm.make_config(data=path, img_size=8)
    data = load_data(cfg, None)
    assert data.splits.test_from == "dataset" and data.test.labels.tolist() == [2]  # eel: 2
    _csv_dataset(tmp_path, ["0.png,cat", "1.png,dog"], ["3.png,owl"])
    with pytest.raises(DataError, match=r"classes the training data lacks: \['owl'\]"):
        load_data(cfg, None)


def test_csv_missing_file_and_escaping_path(tmp_path):
    path = _csv_dataset(tmp_path, ["0.png,cat", "gone.png,dog"])
    with pytest.raises(DataError, match=r"1 of 2 images listed in .*train.csv do not exist"):
        open_source(path)
    path = _csv_dataset(tmp_path, ["0.png,cat", "../../etc/passwd,dog"])
    with pytest.raises(DataError, match="points outside"):
        open_source(path)


def test_predict_reports_bad_images_and_predicts_the_rest(tmp_path, monkeypatch):
    run = tmp_path / "ft"
    root = _folder_with(tmp_path, "ok.png", lambda p: write_image(p, 2))
    idmm.finetune(data=str(root), model="vit_test", img_size=16, batch_size=2, epochs=1,
                  out=str(run), progress="log")  # fmt: skip
    bad = tmp_path / "in"
    bad.mkdir()
    truncated_jpeg(bad / "cut.jpg")
    write_image(bad / "fine.png", 3)
    rows = {Path(r["path"]).name: r for r in idmm.predict(run, [str(bad)])}
    assert rows["fine.png"]["predictions"] and "error" not in rows["fine.png"]
    assert rows["cut.jpg"]["predictions"] == [] and "OSError" in rows["cut.jpg"]["error"]
    with pytest.raises(DataError, match="cut.jpg"):  # nothing readable: an error
        idmm.predict(run, [str(bad / "cut.jpg")])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="fine.png.*DecompressionBombError"):
        idmm.predict(run, [str(bad / "fine.png")])


def test_skipped_images_are_a_log_line_on_the_console_and_in_train_log(tmp_path):
    """From the command line a data warning is an idmm log line ("warning: ..."), also in
    train.log, not Python's UserWarning text with a source line. (A subprocess: pytest records
    the warnings of in-process code itself.)"""
    import subprocess
    import sys

    root = tmp_path / "data"
    for c in ("a", "b"):
        for k in range(8):
            write_image(root / c / f"{k}.png", k)
    zero_bytes(root / "a" / "empty.png")
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "idmm", "pretrain", f"data={root}", "data.skip_bad=true",
         "model=vit_test", "img_size=16", "batch_size=4", "epochs=1", "progress=log",
         "threads=1", f"out={out}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = re.compile(r"\d\d:\d\d:\d\d warning: 1 of \d+ images of folder:")
    assert line.search(done.stderr) and "empty.png" in done.stderr
    assert "UserWarning" not in done.stderr and "warnings.warn" not in done.stderr
    assert line.search((out / "train.log").read_text())
