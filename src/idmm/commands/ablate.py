"""`idmm ablate`: the paper's ablation (its Table 8) re-run on any dataset, with repeats:

    idmm ablate --config configs/cpu/fmnist2040.yaml seeds=3 out=runs/ablate

plain parametric instance discrimination, then + label smoothing, + small resolution,
+ multi-crop, + CutMix (= the paper-faithful IDMM), each an `idmm compare` entry
(commands/variants.py). out/ablation.md sets our numbers beside the paper's (Flowers-102,
DeiT-Tiny: 69.6 -> 70.4 -> 73.1 -> 76.9 -> 79.9), each step's difference to plain instance
discrimination paired over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import stats
from ..builders import make_config
from ..engine.distributed import is_main_process
from .compare import compare, data_label
from .variants import ABLATION, PAPER_TABLE8


def ablate(config: Any = None, seeds: int | str = 1, **overrides: Any) -> dict:
    cfg = make_config(config, **overrides)
    summary = compare(cfg, methods=list(ABLATION), seeds=seeds, reference=ABLATION[0])
    if is_main_process():
        title = (f"# The paper's ablation on {data_label(cfg)}: {cfg.epochs} pre-training + "
                 f"{cfg.finetune.epochs} fine-tuning epochs, model {cfg.model}")  # fmt: skip
        (Path(cfg.out) / "ablation.md").write_text(f"{title}\n\n{ablation_table(summary)}\n")
    return summary


def ablation_table(summary: dict) -> str:
    lines = ["| step | seeds | fine-tune val top-1 (%) | fine-tune test top-1 (%) | 95% interval "
             "| vs instance discrimination: difference, 95% interval, p | paper, Flowers-102 (%) |",
             "|---" * 7 + "|"]  # fmt: skip
    for name, s in summary.items():
        lines.append(
            f"| {s['method']} | {s['seeds']} | {stats.pct(s['finetune_val_top1'])} | "
            f"{stats.pct(s['finetune_top1'])} | "
            f"{stats.interval(s['finetune_top1'])} | "
            f"{stats.difference(s.get('diff_vs_reference'))} | {100 * PAPER_TABLE8[name]:.1f} |"
        )
    return "\n".join(lines)
