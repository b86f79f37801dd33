"""Plots: the confusion counts are checked by hand; figures are checked to be real PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from idmm.plots import confusion_matrix, per_class_accuracy, plot_confusion, plot_curves

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_confusion_matrix_counts():
    true = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    pred = np.array([0, 1, 1, 1, 2, 0, 0])
    expected = np.array([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    m = confusion_matrix(true, pred, num_classes=4)
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, expected)


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_classes=3)


def test_per_class_accuracy_with_empty_class():
    m = np.array([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    acc = per_class_accuracy(torch.from_numpy(m))
    np.testing.assert_allclose(acc[:3], [2 / 3, 2 / 3, 0.0])
    assert math.isnan(acc[3])


def _records(n: int, acc_key: str | None, every: int = 3) -> list[dict]:
    recs: list[dict] = []
    for e in range(n):
        r: dict = {"epoch": e, "loss": 5.0 * 0.8**e}
        if acc_key and e % every == 0:
            r[acc_key] = 0.1 + 0.05 * e
        recs.append(r)
    recs.append({"eval": "knn", "knn_top1_test": 0.42})  # no "epoch": must be ignored
    return recs


def test_plot_curves_with_accuracy(tmp_path):
    runs = {
        "IDMM pre-training": _records(30, "knn_top1_holdout"),
        "fine-tuning": _records(10, "test_top1"),
        "supervised from scratch": _records(10, None),
    }
    out = plot_curves(runs, tmp_path / "sub" / "curves.png", title="demo")
    assert out == tmp_path / "sub" / "curves.png"
    assert _is_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left behind


def test_plot_curves_loss_only_is_narrower(tmp_path):
    both = plot_curves({"a": _records(5, "test_top1")}, tmp_path / "both.png")
    loss = plot_curves({"a": _records(5, None)}, tmp_path / "loss.png")
    assert _is_png(both) and _is_png(loss)
    width = lambda p: int.from_bytes(p.read_bytes()[16:20], "big")  # noqa: E731  (IHDR width)
    # The accuracy panel was dropped; this also fails if the eval record's knn_top1_test
    # (no "epoch") were taken as an accuracy curve.
    assert width(loss) < 0.8 * width(both)


def test_plot_curves_requires_epoch_records(tmp_path):
    with pytest.raises(ValueError):
        plot_curves({"eval only": [{"eval": "knn"}], "empty": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("c", [3, 60])
def test_plot_confusion_writes_png(tmp_path, c):
    rng = np.random.default_rng(0)
    true = rng.integers(0, c, 20 * c)
    pred = np.where(rng.random(20 * c) < 0.7, true, rng.integers(0, c, 20 * c))
    m = confusion_matrix(true, pred, c)
    out = plot_confusion(m, [f"class {i}" for i in range(c)], tmp_path / f"cm{c}.png", title="t")
    assert out == tmp_path / f"cm{c}.png"
    assert _is_png(out)


def test_plot_confusion_rejects_wrong_class_count(tmp_path):
    with pytest.raises(ValueError):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "cm.png")


def test_supervised_losses_get_their_own_axis_and_epochs_are_whole(tmp_path, monkeypatch):
    import idmm.plots as plots_module

    figures = []
    monkeypatch.setattr(plots_module, "save_figure", lambda fig, path: figures.append(fig))
    runs = {"IDMM pre-training": _records(30, "knn_top1_val"),
            "fine-tuning": [{**r, "loss": r["loss"] / 10} if "loss" in r else r
                            for r in _records(4, "val_top1")]}  # fmt: skip
    plot_curves(runs, tmp_path / "c.png", right={"fine-tuning"})
    loss, acc, twin = figures[0].axes  # the twin is added last
    assert [line.get_label() for line in loss.get_lines()] == ["IDMM pre-training"]
    assert [line.get_label() for line in twin.get_lines()] == ["fine-tuning"]
    assert "supervised" in twin.get_ylabel()
    assert loss.get_legend() is not None and len(loss.get_legend().get_texts()) == 2
    for ax in (loss, acc):
        assert all(float(t).is_integer() for t in ax.get_xticks())
