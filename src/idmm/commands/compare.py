"""`idmm compare methods=idmm,simclr,supcon,dino,scratch seeds=3`: the paper's method comparison,
every run under the same trainer, augmentation, splits and budget (epochs), repeated over seeds:

    idmm compare --config configs/cpu/fmnist2040.yaml methods=idmm,idmm-paper,simclr,scratch seeds=3

Each entry runs `idmm run` (pre-train, kNN, linear probe, fine-tune) in out/<name>/ (with
seeds=K, out/seed_<s>/<name>/); `scratch` trains the classifier from random weights for
pre-training + fine-tuning epochs; named variants (idmm-paper, the ablation steps) are a method
with overrides (commands/variants.py). Seed k trains with seed+k and, unless draws=fixed, also
draws its own subset and splits. The table gives mean ± std with a 95% interval of the test
top-1 and each entry's difference to `reference=` (default idmm) paired over seeds, with its
interval and p-value; an interval that covers 0 is printed as not significant. Choices were made
on validation; the validation top-1 stands beside the test top-1. Finished runs are reused
(each stage runs with resume=true); overwrite=true trains everything anew.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

from .. import plots, stats
from ..builders import make_config
from ..config import ConfigError, RunConfig, finetune_config, set_key
from ..engine.checkpoint import write_json
from ..engine.distributed import is_main_process
from ..methods import METHODS, display_name
from ..rundir import RunDir
from .finetune import run_finetune
from .run import run
from .variants import VARIANTS

DEFAULT_METHODS = "idmm,idmm-paper,simclr,supcon,dino,scratch"
METRICS = ("knn_top1", "linear_top1", "finetune_val_top1", "finetune_top1", "minutes")


def names_of(value: str | list[str], key: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"{key}= is empty; give a comma-separated list")
    return names


def reuse(c: RunConfig, cfg: RunConfig) -> None:
    """Finished runs are kept and reused unless the user asked to start over."""
    c.overwrite, c.resume = cfg.overwrite, not cfg.overwrite


def label(name: str) -> str:
    return VARIANTS[name].label if name in VARIANTS else display_name(name)


def compare(config: Any = None, methods: str | list[str] = DEFAULT_METHODS,
            seeds: int | str = 1, reference: str = "idmm", draws: str = "per_seed",
            **overrides: Any) -> dict:  # fmt: skip
    """Each entry pre-trained, evaluated and fine-tuned with the same settings, `seeds` times;
    returns one summary row per entry (also out/compare.{json,csv,md}, out/plots/compare.png)."""
    cfg = make_config(config, **overrides)
    names = names_of(methods, "methods")
    valid = [*METHODS, "scratch", *VARIANTS]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"methods=: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    n_seeds, fixed = seeds_and_draws(seeds, draws)
    out, per_seed = Path(cfg.out), {}
    # baselines without pre-training run last, on the splits the first pre-training recorded
    order = sorted(names, key=_from_scratch)
    for k in range(n_seeds):
        base = seeded(cfg, k, fixed)
        where = out if n_seeds == 1 else out / f"seed_{base.seed}"
        first = RunDir(where / order[0] / "pretrain")
        rows = {name: _one(name, base, where, first) for name in order}
        per_seed[base.seed] = {name: rows[name] for name in names}
    summary = summarise(per_seed, reference if reference in names else None)
    if is_main_process():
        write_comparison(out, summary, per_seed, cfg, reference)
    return summary


def seeds_and_draws(seeds: int | str, draws: str) -> tuple[int, bool]:
    """seeds= and draws= checked: (how many seeds, whether the draw of the data is fixed)."""
    n_seeds = int(seeds) if str(seeds).isdigit() else 0
    if n_seeds < 1:
        raise ConfigError(f"seeds={seeds}: give how many seeds to run, e.g. seeds=3")
    if draws not in ("per_seed", "fixed"):
        raise ConfigError(f"draws={draws}: per_seed (each seed its own subset and splits) or fixed")
    return n_seeds, draws == "fixed"


def seeded(cfg: RunConfig, k: int, fixed: bool) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.seed = cfg.seed + k
    if not fixed:  # another draw of the subset and of the held-out splits, too
        c.data.subset_seed, c.data.split_seed = cfg.data.subset_seed + k, cfg.data.split_seed + k
    return c


def _from_scratch(name: str) -> bool:
    return name == "scratch" or (name in VARIANTS and VARIANTS[name].method == "scratch")


def _one(name: str, cfg: RunConfig, where: Path, splits_from: RunDir) -> dict:
    c = copy.deepcopy(cfg)
    c.out, c.baseline = str(where / name), False
    reuse(c, cfg)
    variant = VARIANTS.get(name)
    for key, value in (variant.overrides(cfg) if variant else {}).items():
        set_key(c, key, value)
    if _from_scratch(name):  # the classifier from random weights
        ft = finetune_config(c)
        ft.init, ft.epochs = None, cfg.epochs + cfg.finetune.epochs  # the same total epochs
        ft.img_size = ft.img_size or c.img_size  # as `idmm run` fine-tunes the pre-trained rows
        return _row(name, None, None, run_finetune(ft, inherit=splits_from), 0, ft.epochs, 0.0)
    c.method = variant.method if variant else name
    r = run(c)
    pre, ft = r.get("pretrain", {}), r["finetune"]
    # the epochs that ran (budget= sets them), else the recipe's
    return _row(name, r["knn"], r["linear"], ft, pre.get("epochs", c.epochs),
                ft.get("epochs", c.finetune.epochs), pre.get("time_s") or 0.0)  # fmt: skip


def _row(name, knn, linear, ft, pre_epochs, ft_epochs, pre_time) -> dict:
    return {
        "method": label(name),
        "pretrain_epochs": pre_epochs,
        "finetune_epochs": ft_epochs,
        "knn_top1": knn["top1"] if knn else None,
        "linear_top1": linear["top1"] if linear else None,
        "finetune_val_top1": ft.get("val_top1"),
        "finetune_top1": ft.get("top1"),
        "minutes": (pre_time + (ft.get("time_s") or 0.0)) / 60,
    }


def summarise(per_seed: dict[int, dict[str, dict]], reference: str | None) -> dict:
    """Per entry: each metric's summary over seeds, and the test top-1's paired difference to
    the reference entry."""
    names = list(next(iter(per_seed.values())))
    out = {}
    for name in names:
        rows = [r[name] for r in per_seed.values()]
        s = {"method": rows[0]["method"], "seeds": len(rows), "epochs": epochs_of(rows)}
        for m in METRICS:
            values = [r[m] for r in rows if r[m] is not None]
            s[m] = stats.summary(values) if values else None
        if reference is not None and name != reference:
            ref = [r[reference]["finetune_top1"] for r in per_seed.values()]
            s["diff_vs_reference"] = stats.paired([r["finetune_top1"] for r in rows], ref)
        out[name] = s
    return out


def epochs_of(rows: list[dict]) -> str:
    """'60 + 30', or '119-130 + 72-78' where the seeds' runs differ (budget= plans each run's
    epochs from its own pace)."""

    def span(key: str) -> str:
        values = [r[key] for r in rows]
        if len(set(values)) == 1:
            return str(values[0])
        return f"{min(values)}-{max(values)}"

    return f"{span('pretrain_epochs')} + {span('finetune_epochs')}"


def comparison_table(summary: dict, reference: str = "idmm") -> str:
    ref = label(reference)
    lines = [
        f"| method | epochs (pre-train + fine-tune) | seeds | kNN top-1 (%) | linear top-1 (%) | "
        f"fine-tune val top-1 (%) | fine-tune test top-1 (%) | 95% interval | test vs {ref}: "
        "difference, 95% interval, p | minutes |",
        "|---" * 10 + "|",
    ]
    for s in summary.values():
        lines.append(
            f"| {s['method']} | {s['epochs']} | {s['seeds']} | {stats.pct(s['knn_top1'])} | "
            f"{stats.pct(s['linear_top1'])} | {stats.pct(s['finetune_val_top1'])} | "
            f"{stats.pct(s['finetune_top1'])} | {stats.interval(s['finetune_top1'])} | "
            f"{stats.difference(s.get('diff_vs_reference'))} | {s['minutes']['mean']:.1f} |"
        )
    return "\n".join(lines)


def data_label(cfg: RunConfig) -> str:
    n = cfg.data.subset_per_class
    return f"{cfg.data.source} ({n} per class)" if n else cfg.data.source


def write_comparison(out: Path, summary: dict, per_seed: dict, cfg: RunConfig,
                     reference: str) -> None:  # fmt: skip
    write_json(
        out / "compare.json",
        {"summary": summary, "per_seed": {str(k): v for k, v in per_seed.items()}},
    )
    cols = ["seed", *next(iter(next(iter(per_seed.values())).values()))]
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({"seed": seed, **row} for seed, rows in per_seed.items()
                    for row in rows.values())  # fmt: skip
    length = (f"budget {cfg.budget} per entry (the epochs each run got are in the table)"
              if cfg.budget else f"pre-training {cfg.epochs} epochs, fine-tuning "
              f"{cfg.finetune.epochs} epochs (scratch: both)")  # fmt: skip
    title = f"# Comparison on {data_label(cfg)}: model {cfg.model}, {length}"
    table = comparison_table(summary, reference)
    text = f"{title}\n\n{table}\n\n![comparison](plots/compare.png)\n"
    (out / "compare.md").write_text(text)

    def mean(s):
        return None if s is None else s["mean"]

    bars = {s["method"]: {"kNN": mean(s["knn_top1"]), "linear": mean(s["linear_top1"]),
                          "fine-tune": mean(s["finetune_top1"])}
            for s in summary.values()}  # fmt: skip
    plots.plot_bars(bars, out / "plots" / "compare.png", title=data_label(cfg))
