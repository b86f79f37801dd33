"""`idmm transfer sources=A,B targets=C,D`: pre-train once on each source (out/pretrain/<source>/)
and fine-tune each on every target (out/finetune/<source>-to-<target>/), the paper's transfer
matrix; `seeds=K` repeats it (as `idmm compare`) and compares each cell with the target's own
pre-training, paired over seeds. Finished runs are reused (each stage runs with resume=true), so
a matrix can grow one dataset at a time; overwrite=true trains everything anew. Each fine-tuning
uses its target's splits (the source's own when source and target are one dataset).
"""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots, stats
from ..builders import make_config
from ..config import RunConfig, finetune_config, pretrain_config
from ..engine.checkpoint import write_json
from ..engine.distributed import is_main_process
from ..methods import display_name
from ..rundir import RunDir
from .compare import names_of, reuse, seeded, seeds_and_draws
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
             targets: str | list[str] = "", seeds: int | str = 1, draws: str = "per_seed",
             **overrides: Any) -> dict:  # fmt: skip
    """Pre-train on each source, fine-tune on each target, `seeds` times (as `idmm compare`:
    seed k trains with seed+k and, unless draws=fixed, draws its own subsets and splits; with
    seeds=K the runs are in out/seed_<s>/). Returns {"sources", "targets", "top1" and
    "val_top1": rows x cols, means over seeds; "per_seed": seed -> the test matrix; "vs_own":
    rows x cols, each cell's test top-1 paired over seeds with the target's own pre-training
    (None where the target is not a source)} (also out/transfer.{csv,md,json}, the heatmap)."""
    cfg = make_config(config, **overrides)
    src_names, tgt_names = names_of(sources, "sources"), names_of(targets, "targets")
    n_seeds, fixed = seeds_and_draws(seeds, draws)
    out = Path(cfg.out)
    tests, vals = [], []
    for k in range(n_seeds):
        base = seeded(cfg, k, fixed)
        where = out if n_seeds == 1 else out / f"seed_{base.seed}"
        test, val = _matrix(base, src_names, tgt_names, where)
        tests.append(test)
        vals.append(val)
    tests, vals = np.array(tests), np.array(vals)  # seeds x rows x cols
    result = {"method": cfg.method, "sources": src_names, "targets": tgt_names,
              "seeds": n_seeds, "top1": tests.mean(0).tolist(), "val_top1": vals.mean(0).tolist(),
              "per_seed": {str(cfg.seed + k): m.tolist() for k, m in enumerate(tests)},
              "vs_own": _vs_own(tests, src_names, tgt_names)}  # fmt: skip
    if is_main_process():
        write_transfer(out, result, cfg)
    return result


def _matrix(cfg: RunConfig, src_names, tgt_names, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """One seed's matrix: test and validation top-1, sources x targets."""
    pre_dirs = {}
    for s in src_names:
        c = _on_data(cfg, s)
        c.out = str(out / "pretrain" / _slug(s))
        reuse(c, cfg)
        run_pretrain(pretrain_config(c))
        pre_dirs[s] = c.out
    test = np.full((len(src_names), len(tgt_names)), np.nan)
    val = test.copy()
    for i, s in enumerate(src_names):
        for j, t in enumerate(tgt_names):
            c = _on_data(cfg, t)
            c.data.mean = c.data.std = None  # the pre-trained backbone's, read from its file
            c.out = str(out / "finetune" / f"{_slug(s)}-to-{_slug(t)}")
            c.finetune.init = pre_dirs[s]
            reuse(c, cfg)
            r = run_finetune(finetune_config(c))
            if not is_main_process():
                r = RunDir(c.out).results().get("finetune", {})
            test[i, j], val[i, j] = r.get("top1", np.nan), r.get("val_top1") or np.nan
    return test, val


def _vs_own(tests: np.ndarray, src_names, tgt_names) -> list[list[dict | None]]:
    """Each cell minus the target's own pre-training (the same column, the row of the target),
    paired over seeds; None where the target is not among the sources (or is the row)."""
    rows = []
    for i in range(len(src_names)):
        row = []
        for j, t in enumerate(tgt_names):
            own = src_names.index(t) if t in src_names else None
            ok = own is not None and own != i
            row.append(stats.paired(tests[:, i, j].tolist(), tests[:, own, j].tolist()) if ok
                       else None)  # fmt: skip
        rows.append(row)
    return rows


def transfer_table(result: dict) -> str:
    """Mean test top-1 (± std over seeds) per cell; then, with several seeds, each cell's
    paired difference to the target's own pre-training."""
    tgts, per_seed = result["targets"], np.array(list(result.get("per_seed", {}).values()))
    lines = ["| pre-train \\ fine-tune | " + " | ".join(tgts) + " |"]
    lines.append("|---" * (len(tgts) + 1) + "|")
    for i, (s, row) in enumerate(zip(result["sources"], result["top1"])):
        cells = [stats.pct(stats.summary(per_seed[:, i, j].tolist())) if len(per_seed) > 1
                 else f"{v * 100:.2f}" for j, v in enumerate(row)]  # fmt: skip
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    vs = result.get("vs_own")
    if len(per_seed) > 1 and vs and any(d for row in vs for d in row):
        lines += ["", "Difference to the target's own pre-training (test top-1, points, paired "
                  f"over {len(per_seed)} seeds):", "",  # fmt: skip
                  "| pre-train \\ fine-tune | " + " | ".join(tgts) + " |",
                  "|---" * (len(tgts) + 1) + "|"]  # fmt: skip
        for s, row in zip(result["sources"], vs):
            lines.append(f"| {s} | " + " | ".join(stats.difference(d) for d in row) + " |")
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
        f"epochs, {result.get('seeds', 1)} seed(s). The diagonal pre-trains and fine-tunes on "
        "the same dataset; every choice was made on validation, test evaluated once.\n\n"
        f"{transfer_table(result)}\n\n![transfer](plots/transfer.png)\n"
    )
    (out / "transfer.md").write_text(text)
    plots.plot_heatmap(top1, srcs, tgts, out / "plots" / "transfer.png",
                       title=f"{method} transfer", xlabel="fine-tuned on",
                       ylabel="pre-trained on")  # fmt: skip
