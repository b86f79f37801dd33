"""`idmm sweep models=a,b,c`: the same recipe for several backbones, to pick one per device.

`model@SIZE` runs that model with every crop at SIZE px (e.g. pvt_v2_b0@32: PVTv2's
spatial-reduction layers need at least 32 px), the rest of the recipe unchanged.

Each model runs `idmm run` (pre-training, kNN, linear probe, fine-tuning) in out/<model>/; then
its fine-tuned classifier is measured on this machine: parameters, forward FLOPs of one image
(FlopCounterMode), and inference latency at batch 1 and batch 64 (median wall time, eval mode,
the run's precision). Writes out/sweep.{json,csv,md} and out/plots/sweep.png (accuracy against
parameters, FLOPs and latency). Finished runs are reused, as in `idmm compare`.
"""

from __future__ import annotations

import copy
import csv
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..builders import make_config, runtime
from ..config import ConfigError, RunConfig
from ..engine.checkpoint import write_json
from ..engine.distributed import is_main_process
from ..models import count_params
from ..plots import save_figure
from .compare import names_of, reuse
from .export import load_model
from .run import run

DEFAULT_MODELS = "vit_cpu_small,vit_cpu_small_conv,vit_cpu,resnet_cpu_small"


@torch.no_grad()
def measure(model: torch.nn.Module, size: int, rt, repeats: int = 20) -> dict[str, float]:
    """Parameters, forward GFLOPs per image, and median latency (ms) at batch 1 and 64."""
    model = model.to(rt.device).eval()
    x1 = torch.randn(1, 3, size, size, device=rt.device)
    with FlopCounterMode(display=False) as counter:
        model(x1)
    out = {"params_m": count_params(model) / 1e6, "gflops": counter.get_total_flops() / 1e9}
    for batch, n in ((1, repeats), (64, max(3, repeats // 4))):
        x = torch.randn(batch, 3, size, size, device=rt.device)
        times = []
        for i in range(n + 2):  # 2 warm-up calls
            t = time.perf_counter()
            with rt.autocast():
                model(x)
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            if i >= 2:
                times.append(time.perf_counter() - t)
        out[f"latency_bs{batch}_ms"] = 1000 * statistics.median(times)
    return out


def sweep(config: RunConfig | str | Path | None = None, models: str | list[str] = DEFAULT_MODELS,
          **overrides: Any) -> dict:  # fmt: skip
    """One row per model (also out/sweep.{json,csv,md} and out/plots/sweep.png)."""
    cfg = make_config(config, **overrides)
    out, rows = Path(cfg.out), {}
    for name in names_of(models, "models"):
        c = copy.deepcopy(cfg)
        c.model, c.out, c.baseline = name, str(out / name), False
        if "@" in name:  # model@SIZE: every crop of this model at SIZE px (PVTv2 needs >= 32)
            c.model, size = name.split("@", 1)
            if not size.isdigit():
                raise ConfigError(f"models=: '{name}' should be MODEL@PIXELS, e.g. pvt_v2_b0@32")
            c.img_size = c.aug.local_size = c.finetune.img_size = int(size)
        reuse(c, cfg)
        r = run(c)
        rt = runtime(c)
        model = load_model(out / name / "finetune")
        size = model.pretrained_cfg["input_size"][-1]
        pre, ft = r.get("pretrain", {}), r["finetune"]
        rows[name] = {
            "model": name,
            "knn_top1": r["knn"]["top1"],
            "linear_top1": r["linear"]["top1"],
            "finetune_val_top1": ft.get("val_top1"),  # what to choose a model by
            "finetune_top1": ft.get("top1"),
            "train_minutes": ((pre.get("time_s") or 0) + (ft.get("time_s") or 0)) / 60,
            "img_size": size,
            "precision": rt.precision,
            **measure(model, size, rt),
        }
    if is_main_process():
        write_sweep(out, rows, cfg)
    return rows


def sweep_table(rows: dict) -> str:
    lines = [
        "| model | params (M) | GFLOPs / image | latency bs1 (ms) | latency bs64 (ms) | "
        "kNN (%) | linear (%) | fine-tune val top-1 (%) | fine-tune test top-1 (%) | "
        "train minutes |",
        "|---" * 10 + "|",
    ]
    for r in rows.values():
        val = r["finetune_val_top1"]
        lines.append(
            f"| {r['model']} | {r['params_m']:.2f} | {r['gflops']:.3f} | "
            f"{r['latency_bs1_ms']:.2f} | {r['latency_bs64_ms']:.1f} | {100 * r['knn_top1']:.2f} | "
            f"{100 * r['linear_top1']:.2f} | {'' if val is None else f'{100 * val:.2f}'} | "
            f"{100 * r['finetune_top1']:.2f} | {r['train_minutes']:.1f} |"
        )
    return "\n".join(lines)


def write_sweep(out: Path, rows: dict, cfg: RunConfig) -> None:
    write_json(out / "sweep.json", rows)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(next(iter(rows.values()))))
        w.writeheader()
        w.writerows(rows.values())
    title = (f"# Model sweep on {cfg.data.source}: {cfg.epochs} pre-training + "
             f"{cfg.finetune.epochs} fine-tuning epochs each")  # fmt: skip
    (out / "sweep.md").write_text(f"{title}\n\n{sweep_table(rows)}\n\n![sweep](plots/sweep.png)\n")
    plot_sweep(rows, out / "plots" / "sweep.png", cfg.data.source)


def plot_sweep(rows: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(12, 3.8), dpi=110)
    axes = fig.subplots(1, 3)
    panels = (("params_m", "parameters (M)"), ("gflops", "GFLOPs per image"),
              ("latency_bs1_ms", "latency (ms): batch 1 (o), batch 64 / 64 (x)"))  # fmt: skip
    for ax, (key, label) in zip(axes, panels):
        for i, r in enumerate(rows.values()):
            acc = 100 * r["finetune_top1"]
            ax.plot(r[key], acc, "o", color=f"C{i}", label=r["model"])
            if key == "latency_bs1_ms":
                ax.plot(r["latency_bs64_ms"] / 64, acc, "x", color=f"C{i}")
        ax.set(xlabel=label, ylabel="fine-tune top-1 (%)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: accuracy against model cost")
    save_figure(fig, path)
