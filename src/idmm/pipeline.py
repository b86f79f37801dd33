"""One command from a folder of images to a trained, evaluated model and a report:

    idmm.run(data="fashion-mnist", subset_per_class=204, out="runs/fm", baseline=True)

pre-train (IDMM) -> kNN and linear probe of the frozen backbone -> fine-tune -> report.md.
With `baseline=true`, the same classifier is also trained from scratch with the fine-tuning
recipe for as many epochs as pre-training and fine-tuning together, so the report answers the
question that matters: did pre-training on the data itself pay off?

Layout of `out`: pretrain/, finetune/, scratch/ (each a complete run directory), plus
config.yaml, results.json, report.md and plots/ at the top.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from . import plots
from .api import evaluate_knn, evaluate_linear, make_config, pretrain
from .config import Config, save_yaml
from .engine.checkpoint import read_results, write_json
from .engine.distributed import is_main_process
from .engine.log import read_metrics
from .finetune import run_finetune
from .methods import display_name

SUMMARY_KEYS = ("top1", "top1_best", "top5", "time_s", "epochs")


def run(config: Config | str | Path | None = None, **overrides: Any) -> dict:
    """The whole pipeline; returns the combined results (also in out/results.json)."""
    cfg = make_config(config, **overrides)
    out = Path(cfg.out)
    pre = copy.deepcopy(cfg)
    pre.out = str(out / "pretrain")
    pretrain(pre)  # resolves pre's model, sizes and normalisation in place
    where = {"device": pre.device, "precision": pre.precision}
    if cfg.threads:
        where["threads"] = cfg.threads
    results: dict[str, Any] = {
        "method": pre.method,
        "pretrain": read_results(out / "pretrain").get("pretrain", {}),
        "knn": evaluate_knn(out / "pretrain", **where),
        "linear": evaluate_linear(out / "pretrain", **where),
    }
    ft = _stage(cfg, pre, out / "finetune")
    ft.finetune.init = str(out / "pretrain")
    results["finetune"] = run_finetune(ft)
    if cfg.baseline:
        scratch = _stage(cfg, pre, out / "scratch")
        scratch.finetune.init = None
        scratch.finetune.epochs = cfg.epochs + cfg.finetune.epochs  # the same total epochs
        results["scratch"] = run_finetune(scratch)
    if is_main_process():  # under torchrun, one process writes
        save_yaml(pre, out / "config.yaml")
        write_json(out / "results.json", results)
        write_report(out, pre, results)
    return results


def _stage(cfg: Config, pre: Config, out: Path) -> Config:
    """A fine-tuning config on the pre-trained architecture and normalisation."""
    c = copy.deepcopy(cfg)
    c.out, c.model, c.img_size = str(out), pre.model, pre.img_size
    c.data.mean, c.data.std = pre.data.mean, pre.data.std
    c.device, c.precision = pre.device, pre.precision
    return c


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


def summary_table(results: dict) -> str:
    """The headline numbers as a Markdown table (printed by the CLI, opened by the report)."""
    rows = ["| model | epochs | minutes | test top-1 (last) | best | top-5 |", "|---" * 6 + "|"]
    pre = results.get("pretrain", {})
    pre_time = pre.get("time_s") or 0.0
    method = display_name(results.get("method", "idmm"))
    for key, name, extra_epochs, extra_time in (
        ("finetune", f"{method} pre-training + fine-tuning", pre.get("epochs"), pre_time),
        ("scratch", "supervised from scratch", 0, 0.0),
    ):
        r = results.get(key)
        if not r:
            continue
        epochs = r.get("epochs")
        if epochs and extra_epochs:
            epochs = f"{extra_epochs} + {epochs}"
        minutes = ((r.get("time_s") or 0.0) + extra_time) / 60
        rows.append(
            f"| {name} | {epochs} | {minutes:.1f} | {_pct(r.get('top1'))} | "
            f"{_pct(r.get('top1_best'))} | {_pct(r.get('top5'))} |"
        )
    return "\n".join(rows)


def _method_recipe(cfg: Config) -> str:
    if cfg.method == "idmm":
        i = cfg.idmm
        return (f", CutMix alpha {i.cutmix_alpha}, label smoothing {i.label_smoothing}, "
                f"head init `{i.head_init}`")  # fmt: skip
    if cfg.method in ("simclr", "supcon"):
        return f", temperature {cfg.contrastive.temperature}"
    if cfg.method == "dino":
        d = cfg.dino
        return f", {d.out_dim} prototypes, teacher temperature {d.teacher_temp}"
    return ""


def write_report(out: Path, cfg: Config, results: dict) -> Path:
    """report.md: the numbers, the recipe, the curves and the confusion matrix."""
    # fine-tuning continues the pre-training's epoch count, so the from-scratch baseline (with as
    # many epochs in total) lines up with the IDMM curves on one axis
    shift = cfg.epochs
    method = display_name(cfg.method)
    runs = {
        f"{method} pre-training": read_metrics(out / "pretrain"),
        "fine-tuning": [
            {**r, "epoch": r["epoch"] + shift} if "epoch" in r else r
            for r in read_metrics(out / "finetune")
        ],
    }
    if (out / "scratch").is_dir():
        runs["supervised from scratch"] = read_metrics(out / "scratch")
    plots.plot_curves(runs, out / "plots" / "curves.png", title=f"{cfg.data.source}")
    ft = results["finetune"]
    knn, lin = results["knn"], results["linear"]
    per_class = "\n".join(
        f"| {c} | {_pct(a)} |" for c, a in sorted(ft.get("per_class", {}).items())
    )
    f = cfg.finetune
    text = f"""# idmm report: {cfg.data.source}

{summary_table(results)}

Evaluated on the {ft["test_split"]} split ({ft["test_images"]} images); training set
{ft["train_images"]} images. Top-1 is the last epoch's (the paper's protocol).

## Frozen {method} backbone

- kNN (cosine, k={knn["k"]}, T={knn["temperature"]}): **{_pct(knn["top1"])}**
- linear probe (lr {lin["best_lr"]} chosen on held-out training images): **{_pct(lin["top1"])}**

## Recipe

- model `{cfg.model}`, pre-training {cfg.epochs} epochs at {cfg.img_size}px, batch
  {cfg.batch_size}, lr {cfg.lr:.2e}, {cfg.aug.global_crops} global + {cfg.aug.local_crops} local
  crops (local at {cfg.aug.local_size}px), method `{cfg.method}`{_method_recipe(cfg)}
- fine-tuning {f.epochs} epochs at {ft["img_size"]}px, batch {f.batch_size}, base lr {f.base_lr},
  RandAugment {f.randaug_ops} ops m{f.randaug_magnitude}, Mixup (even epochs) alpha
  {f.mixup_alpha} / CutMix (odd epochs) alpha {f.cutmix_alpha}, label smoothing
  {f.label_smoothing}, drop-path {f.drop_path}
- {cfg.device}, {cfg.precision}; the full resolved settings are in `config.yaml`

## Curves

![training curves](plots/curves.png)

## Confusion matrix (fine-tuned, last epoch)

![confusion matrix](finetune/plots/confusion.png)

| class | accuracy |
|---|---|
{per_class}
"""
    path = out / "report.md"
    path.write_text(text)
    return path
