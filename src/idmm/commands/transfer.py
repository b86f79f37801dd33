"""`idmm transfer sources=A,B targets=C,D`: pre-train once on each source (out/pretrain/<source>/)
and fine-tune each on every target (out/finetune/<source>-to-<target>/), the paper's transfer
matrix. Finished runs are reused (each stage runs with resume=true), so a matrix can grow one
dataset at a time; overwrite=true trains everything anew. Each fine-tuning uses its target's
splits (the source's own when source and target are one dataset).
"""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..builders import make_config
from ..config import RunConfig, finetune_config, pretrain_config
from ..engine.checkpoint import write_json
from ..engine.distributed import is_main_process
from ..methods import display_name
from ..rundir import RunDir
from .compare import names_of, reuse
from .finetune import run_finetune
from .pretrain import run_pretrain


def _slug(spec: str) -> str:
    name = Path(spec.rstrip("/")).name or spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _on_data(cfg: RunConfig, spec: str) -> RunConfig:
    """`cfg` on another dataset: the subset, root and statistics of cfg's data do not apply."""
    c = copy.deepcopy(cfg)
    if spec != cfg.data.source:
        c.data.subset_per_class, c.data.root = None, None
    c.data.source = spec
    return c


def transfer(config: RunConfig | str | Path | None = None, sources: str | list[str] = "",
             targets: str | list[str] = "", **overrides: Any) -> dict:  # fmt: skip
    """Pre-train on each source, fine-tune on each target; returns {"sources", "targets",
    "top1": rows x cols} (also out/transfer.{csv,md,json} and out/plots/transfer.png)."""
    cfg = make_config(config, **overrides)
    src_names, tgt_names = names_of(sources, "sources"), names_of(targets, "targets")
    out = Path(cfg.out)
    pre_dirs = {}
    for s in src_names:
        c = _on_data(cfg, s)
        c.out = str(out / "pretrain" / _slug(s))
        reuse(c, cfg)
        run_pretrain(pretrain_config(c))
        pre_dirs[s] = c.out
    top1 = np.full((len(src_names), len(tgt_names)), np.nan)
    for i, s in enumerate(src_names):
        for j, t in enumerate(tgt_names):
            c = _on_data(cfg, t)
            c.data.mean = c.data.std = None  # the pre-trained backbone's, read from its file
            c.out = str(out / "finetune" / f"{_slug(s)}-to-{_slug(t)}")
            c.finetune.init = pre_dirs[s]
            reuse(c, cfg)
            top1[i, j] = run_finetune(finetune_config(c)).get("top1", np.nan)
            if not is_main_process():
                top1[i, j] = RunDir(c.out).results().get("finetune", {}).get("top1", np.nan)
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


def write_transfer(out: Path, result: dict, cfg: RunConfig) -> None:
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
