"""The paper's comparisons, one command each, every run under the same trainer, augmentation and
budget (epochs), so the numbers differ only by what is compared:

    idmm compare --config configs/cpu/fmnist2040.yaml methods=idmm,simclr,supcon,dino,scratch
    idmm transfer --config configs/cpu/fmnist2040.yaml sources=fmnist-2040,sklearn-digits
        targets=fmnist-2040,sklearn-digits

`compare` runs `idmm run` (pre-train, kNN, linear probe, fine-tune) once per method in out/<method>/
and trains `scratch` (the classifier from random weights) for pre-training + fine-tuning epochs.
`transfer` pre-trains once on each source (out/pretrain/<source>/) and fine-tunes each on every
target (out/finetune/<source>-to-<target>/). A run that already exists and finished is reused,
not trained again (each stage runs with resume=true), so a matrix can grow one dataset at a time;
overwrite=true trains everything anew.
"""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline, plots
from .api import make_config, pretrain
from .config import Config, ConfigError
from .engine.checkpoint import read_results, write_json
from .engine.distributed import is_main_process
from .finetune import run_finetune
from .methods import METHODS, display_name

DEFAULT_METHODS = "idmm,simclr,supcon,dino,scratch"


def _names(value: str | list[str], key: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"{key}= is empty; give a comma-separated list")
    return names


def _reuse(c: Config, cfg: Config) -> None:
    """Finished runs are kept and reused unless the user asked to start over."""
    c.overwrite, c.resume = cfg.overwrite, not cfg.overwrite


def compare(config: Config | str | Path | None = None, methods: str | list[str] = DEFAULT_METHODS,
            **overrides: Any) -> dict:  # fmt: skip
    """Each method pre-trained, evaluated and fine-tuned with the same settings; returns one row
    per method (also out/compare.{json,csv,md} and out/plots/compare.png)."""
    cfg = make_config(config, **overrides)
    names = _names(methods, "methods")
    valid = [*METHODS, "scratch"]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"methods=: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    out, rows = Path(cfg.out), {}
    for name in names:
        c = copy.deepcopy(cfg)
        c.out, c.baseline = str(out / name), False
        _reuse(c, cfg)
        if name == "scratch":
            c.finetune.init = None
            c.finetune.epochs = cfg.epochs + cfg.finetune.epochs  # the same total epochs
            ft = run_finetune(c)
            rows[name] = _row(name, None, None, ft, 0, c.finetune.epochs, 0.0)
        else:
            c.method = name
            r = pipeline.run(c)
            pre = r.get("pretrain", {})
            rows[name] = _row(name, r["knn"], r["linear"], r["finetune"], cfg.epochs,
                              cfg.finetune.epochs, pre.get("time_s") or 0.0)  # fmt: skip
    if is_main_process():
        write_comparison(out, rows, cfg)
    return rows


def _row(name, knn, linear, ft, pre_epochs, ft_epochs, pre_time) -> dict:
    return {
        "method": display_name(name),
        "pretrain_epochs": pre_epochs,
        "finetune_epochs": ft_epochs,
        "knn_top1": knn["top1"] if knn else None,
        "linear_top1": linear["top1"] if linear else None,
        "finetune_top1": ft.get("top1"),
        "minutes": (pre_time + (ft.get("time_s") or 0.0)) / 60,
    }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.2f}"


def comparison_table(rows: dict) -> str:
    lines = [
        "| method | epochs (pre-train + fine-tune) | kNN top-1 (%) | linear top-1 (%) | "
        "fine-tune top-1 (%) | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['method']} | {r['pretrain_epochs']} + {r['finetune_epochs']} | "
            f"{_pct(r['knn_top1'])} | {_pct(r['linear_top1'])} | {_pct(r['finetune_top1'])} | "
            f"{r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def _data_label(cfg: Config) -> str:
    n = cfg.data.subset_per_class
    return f"{cfg.data.source} ({n} per class)" if n else cfg.data.source


def write_comparison(out: Path, rows: dict, cfg: Config) -> None:
    cols = list(next(iter(rows.values())))
    write_json(out / "compare.json", rows)
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows.values())
    title = (
        f"# Comparison on {_data_label(cfg)}: model {cfg.model}, pre-training {cfg.epochs} "
        f"epochs, fine-tuning {cfg.finetune.epochs} epochs (scratch: both)"
    )
    text = f"{title}\n\n{comparison_table(rows)}\n\n![comparison](plots/compare.png)\n"
    (out / "compare.md").write_text(text)
    bars = {
        r["method"]: {"kNN": r["knn_top1"], "linear": r["linear_top1"],
                      "fine-tune": r["finetune_top1"]}
        for r in rows.values()
    }  # fmt: skip
    plots.plot_bars(bars, out / "plots" / "compare.png", title=_data_label(cfg))


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _on_data(cfg: Config, spec: str) -> Config:
    """`cfg` on another dataset: the subset, root and statistics of cfg's data do not apply."""
    c = copy.deepcopy(cfg)
    if spec != cfg.data.source:
        c.data.subset_per_class, c.data.root = None, None
    c.data.source = spec
    return c


def transfer(config: Config | str | Path | None = None, sources: str | list[str] = "",
             targets: str | list[str] = "", **overrides: Any) -> dict:  # fmt: skip
    """Pre-train on each source, fine-tune on each target; returns {"sources", "targets",
    "top1": rows x cols} (also out/transfer.{csv,md,json} and out/plots/transfer.png)."""
    cfg = make_config(config, **overrides)
    src_names, tgt_names = _names(sources, "sources"), _names(targets, "targets")
    out = Path(cfg.out)
    pre_dirs = {}
    for s in src_names:
        c = _on_data(cfg, s)
        c.out = str(out / "pretrain" / _slug(s))
        _reuse(c, cfg)
        pretrain(c)
        pre_dirs[s] = c.out
    top1 = np.full((len(src_names), len(tgt_names)), np.nan)
    for i, s in enumerate(src_names):
        for j, t in enumerate(tgt_names):
            c = _on_data(cfg, t)
            c.data.mean = c.data.std = None  # the pre-trained backbone's, read from its file
            c.out = str(out / "finetune" / f"{_slug(s)}-to-{_slug(t)}")
            c.finetune.init = pre_dirs[s]
            _reuse(c, cfg)
            top1[i, j] = run_finetune(c).get("top1", np.nan)
            if not is_main_process():
                top1[i, j] = read_results(c.out).get("finetune", {}).get("top1", np.nan)
    result = {"method": cfg.method, "sources": src_names, "targets": tgt_names,
              "top1": top1.tolist()}  # fmt: skip
    if is_main_process():
        write_transfer(out, result, cfg)
    return result


def transfer_table(result: dict) -> str:
    tgts = result["targets"]
    lines = ["| pre-train \\ fine-tune | " + " | ".join(tgts) + " |"]
    lines.append("|---" * (len(tgts) + 1) + "|")
    for s, row in zip(result["sources"], result["top1"]):
        lines.append(f"| {s} | " + " | ".join(f"{v * 100:.2f}" for v in row) + " |")
    return "\n".join(lines)


def write_transfer(out: Path, result: dict, cfg: Config) -> None:
    srcs, tgts, top1 = result["sources"], result["targets"], np.array(result["top1"])
    write_json(out / "transfer.json", result)
    with open(out / "transfer.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pretrain \\ finetune", *tgts])
        for s, row in zip(srcs, top1):
            w.writerow([s, *[f"{v:.4f}" for v in row]])
    method = display_name(cfg.method)
    text = (
        f"# Transfer: {method} pre-training (rows) -> fine-tuning (columns), test top-1 (%)\n\n"
        f"Model {cfg.model}, {cfg.epochs} pre-training + {cfg.finetune.epochs} fine-tuning "
        "epochs. The diagonal pre-trains and fine-tunes on the same dataset.\n\n"
        f"{transfer_table(result)}\n\n![transfer](plots/transfer.png)\n"
    )
    (out / "transfer.md").write_text(text)
    plots.plot_heatmap(top1, srcs, tgts, out / "plots" / "transfer.png",
                       title=f"{method} transfer", xlabel="fine-tuned on",
                       ylabel="pre-trained on")  # fmt: skip
