"""Figures for reports: training curves from metrics.jsonl records and confusion matrices.

matplotlib is imported inside the functions (so `import idmm` stays fast and matplotlib stays an
optional dependency) and only through `matplotlib.figure.Figure`, which renders with Agg without
pyplot, so no global backend is switched under anyone else's feet.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    """Accept torch tensors (any device) as well as arrays, without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _is_accuracy_key(key: str) -> bool:
    """Accuracy keys are named like test_top1, knn_top1_test, knn_top1_holdout."""
    return key.endswith("top1") or "top1_" in key


def _number(v: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values (skipped when plotting)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save atomically: a reader never sees a half-written image, a crash leaves no stub file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a figure is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "",
                right: tuple[str, ...] | set[str] = ()) -> Path:  # fmt: skip
    """Loss (left) and accuracy in % (right) per epoch, one line per run (and accuracy key).

    The losses of the runs named in `right` get their own axis on the right of the loss panel:
    a supervised cross-entropy (~1) drawn on the scale of an N-way instance loss (~10) is a flat
    line. Records without "epoch" (evaluation records) are ignored. The accuracy panel is dropped
    when no run logs accuracy. Raises ValueError when no run has any epoch record.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    losses: dict[str, list[tuple[int, float]]] = {}
    accs: dict[tuple[str, str], list[tuple[int, float]]] = {}
    any_epoch = False
    for label, records in runs.items():
        for rec in records:
            if "epoch" not in rec:
                continue
            any_epoch = True
            epoch = int(rec["epoch"])
            if (loss := _number(rec.get("loss"))) is not None:
                losses.setdefault(label, []).append((epoch, loss))
            for key, value in rec.items():
                if _is_accuracy_key(key) and (acc := _number(value)) is not None:
                    accs.setdefault((label, key), []).append((epoch, 100.0 * acc))
    if not any_epoch:
        raise ValueError("plot_curves: no run has any record with an 'epoch' key")

    fig = Figure(figsize=(10, 4) if accs else (5.5, 4), dpi=120)
    axes = fig.subplots(1, 2 if accs else 1, squeeze=False)[0]
    ax = axes[0]
    # one colour per run in both panels; a run's accuracy keys differ by line style
    color = {label: f"C{i % 10}" for i, label in enumerate(runs)}
    left = {k: v for k, v in losses.items() if k not in right}
    twin = {k: v for k, v in losses.items() if k in right}
    loss_axes = [(ax, left or twin, "loss")]
    if left and twin:
        loss_axes.append((ax.twinx(), twin, "supervised loss (cross-entropy)"))
    for axis, series, ylabel in loss_axes:
        for label, pts in series.items():
            pts.sort()
            axis.plot([e for e, _ in pts], [v for _, v in pts], label=label, color=color[label])
        values = [v for pts in series.values() for _, v in pts]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")
        axis.set_ylabel(ylabel)
    ax.set(xlabel="epoch", title="loss")
    for a in axes:
        a.grid(True, alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if losses:
        handles = [h for axis, _, _ in loss_axes for h in axis.get_legend_handles_labels()[0]]
        axes[0].legend(handles=handles, fontsize=8)
    if accs:
        ax = axes[1]
        styles: dict[str, list[str]] = {}
        for (label, key), pts in accs.items():
            pts.sort()
            name = f"{label}: {key}" if len(runs) > 1 else key
            keys = styles.setdefault(label, [])
            keys.append(key)
            ax.plot(
                [e for e, _ in pts],
                [v for _, v in pts],
                marker="o",
                ms=3,
                label=name,
                color=color[label],
                linestyle=("-", "--", ":", "-.")[(len(keys) - 1) % 4],
            )
        ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (%)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_matrix(true: Any, pred: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted, via one bincount."""
    t = _to_numpy(true).astype(np.int64).ravel()
    p = _to_numpy(pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: {t.size} true labels but {p.size} predictions")
    for name, x in (("true", t), ("pred", p)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} labels outside [0, {num_classes})")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(matrix: Any) -> np.ndarray:
    """Diagonal / row sums; NaN for classes without samples (not 0: nothing was measured)."""
    m = _to_numpy(matrix).astype(np.float64)
    rows = m.sum(axis=1)
    out = np.full(len(m), np.nan)
    np.divide(np.diag(m), rows, out=out, where=rows > 0)
    return out


def plot_confusion(matrix: Any, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class), percent text when C <= 20."""
    from matplotlib.figure import Figure

    m = _to_numpy(matrix).astype(np.float64)
    c = len(m)
    if m.shape != (c, c) or len(classes) != c:
        raise ValueError(f"plot_confusion: matrix {m.shape} does not match {len(classes)} classes")
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    side = min(max(4.0, 0.45 * c + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(100.0 * norm, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    if c <= 50:
        size = 9 if c <= 20 else 6
        rot = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"}
        ax.set_xticks(range(c), classes, fontsize=size, **rot)
        ax.set_yticks(range(c), classes, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if c <= 20:
        style = {"ha": "center", "va": "center", "fontsize": 8 if c <= 10 else 7}
        for (i, j), v in np.ndenumerate(norm):
            colour = "white" if v > 0.5 else "black"  # stay legible on dark cells
            ax.text(j, i, f"{100 * v:.0f}", color=colour, **style)
    ax.set(xlabel="predicted", ylabel="true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bars(table: dict[str, dict[str, float | None]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of accuracies in %: one group per row of `table` (a method), one bar per
    metric (kNN, linear, fine-tune); missing values leave a gap."""
    from matplotlib.figure import Figure

    rows = list(table)
    metrics = list(dict.fromkeys(k for r in table.values() for k in r))
    fig = Figure(figsize=(max(5.0, 1.3 * len(rows) + 2), 4), dpi=120)
    ax = fig.subplots()
    width = 0.8 / max(1, len(metrics))
    for j, metric in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        values = [_number(table[r].get(metric)) for r in rows]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=metric)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, 100 * v),
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(rows)), rows)
    ax.set_ylabel("test top-1 (%)")
    finite = [100 * v for r in table.values() for v in r.values() if _number(v) is not None]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 15), min(100.0, max(finite) + 5))
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_heatmap(values: Any, rows: list[str], cols: list[str], path: str | Path,
                 title: str = "", xlabel: str = "", ylabel: str = "") -> Path:  # fmt: skip
    """A matrix of accuracies in % (NaN = not run) with the numbers written in the cells."""
    from matplotlib.figure import Figure

    v = 100.0 * _to_numpy(values).astype(np.float64)
    fig = Figure(figsize=(1.6 * len(cols) + 2.5, 1.1 * len(rows) + 1.5), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(v), cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="test top-1 (%)")
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows)
    finite = v[np.isfinite(v)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), x in np.ndenumerate(v):
        text = "n/a" if not np.isfinite(x) else f"{x:.1f}"
        colour = "black" if np.isfinite(x) and x > mid else "white"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
