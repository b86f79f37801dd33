"""`idmm compare methods=idmm,simclr,supcon,dino,scratch`: the paper's method comparison, every
run under the same trainer, augmentation, splits and budget (epochs), so the numbers differ only
by what is compared:

    idmm compare --config configs/cpu/fmnist2040.yaml methods=idmm,simclr,supcon,dino,scratch

Runs `idmm run` (pre-train, kNN, linear probe, fine-tune) once per method in out/<method>/ and
trains `scratch` (the classifier from random weights) for pre-training + fine-tuning epochs, on
the splits the first pre-training decided. A run that already exists and finished is reused, not
trained again (each stage runs with resume=true); overwrite=true trains everything anew.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

from .. import plots
from ..builders import make_config
from ..config import ConfigError, RunConfig, finetune_config
from ..engine.checkpoint import write_json
from ..engine.distributed import is_main_process
from ..methods import METHODS, display_name
from ..rundir import RunDir
from .finetune import run_finetune
from .run import run

DEFAULT_METHODS = "idmm,simclr,supcon,dino,scratch"


def names_of(value: str | list[str], key: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"{key}= is empty; give a comma-separated list")
    return names


def reuse(c: RunConfig, cfg: RunConfig) -> None:
    """Finished runs are kept and reused unless the user asked to start over."""
    c.overwrite, c.resume = cfg.overwrite, not cfg.overwrite


def compare(config: Any = None, methods: str | list[str] = DEFAULT_METHODS,
            **overrides: Any) -> dict:  # fmt: skip
    """Each method pre-trained, evaluated and fine-tuned with the same settings; returns one row
    per method (also out/compare.{json,csv,md} and out/plots/compare.png)."""
    cfg = make_config(config, **overrides)
    names = names_of(methods, "methods")
    valid = [*METHODS, "scratch"]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"methods=: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    out, rows = Path(cfg.out), {}
    pretrained = [RunDir(out / n / "pretrain") for n in names if n != "scratch"]
    for name in names:
        c = copy.deepcopy(cfg)
        c.out, c.baseline = str(out / name), False
        reuse(c, cfg)
        if name == "scratch":  # a baseline, not a method: the classifier from random weights
            ft = finetune_config(c)
            ft.init = None
            ft.epochs = cfg.epochs + cfg.finetune.epochs  # the same total epochs
            splits = next((p for p in pretrained if p.splits_file.is_file()), None)
            r = run_finetune(ft, inherit=splits)
            rows[name] = _row(name, None, None, r, 0, ft.epochs, 0.0)
        else:
            c.method = name
            r = run(c)
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


def data_label(cfg: RunConfig) -> str:
    n = cfg.data.subset_per_class
    return f"{cfg.data.source} ({n} per class)" if n else cfg.data.source


def write_comparison(out: Path, rows: dict, cfg: RunConfig) -> None:
    cols = list(next(iter(rows.values())))
    write_json(out / "compare.json", rows)
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows.values())
    title = (
        f"# Comparison on {data_label(cfg)}: model {cfg.model}, pre-training {cfg.epochs} "
        f"epochs, fine-tuning {cfg.finetune.epochs} epochs (scratch: both)"
    )
    text = f"{title}\n\n{comparison_table(rows)}\n\n![comparison](plots/compare.png)\n"
    (out / "compare.md").write_text(text)
    bars = {
        r["method"]: {"kNN": r["knn_top1"], "linear": r["linear_top1"],
                      "fine-tune": r["finetune_top1"]}
        for r in rows.values()
    }  # fmt: skip
    plots.plot_bars(bars, out / "plots" / "compare.png", title=data_label(cfg))
