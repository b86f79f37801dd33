"""`idmm run`: one command from a folder of images to a trained, evaluated model and a report:

    idmm.run(data="fashion-mnist", subset_per_class=204, out="runs/fm", baseline=True)

pre-train (IDMM) -> kNN and linear probe of the frozen backbone -> fine-tune -> report.md.
With `baseline=true`, the same classifier is also trained from scratch with the fine-tuning
recipe for as many epochs as pre-training and fine-tuning together, so the report answers the
question that matters: did pre-training on the data itself pay off?

The splits are decided once, by pre-training (pretrain/splits.json), and every later stage reads
them back. Layout of `out`: pretrain/, finetune/, scratch/ (each a complete run directory), plus
config.yaml, splits.json, results.json, report.md and plots/ at the top.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from .. import plots
from ..builders import make_config
from ..config import FinetuneConfig, finetune_config, pretrain_config, run_config
from ..engine.budget import Budget
from ..engine.distributed import is_main_process
from ..methods import display_name, get_method
from ..rundir import RunDir
from .evaluate import frozen_features, knn, linear
from .finetune import probe, run_finetune, stage2_config, stage_epochs
from .pretrain import run_pretrain


def run(config: Any = None, **overrides: Any) -> dict:
    """The whole pipeline; returns the combined results (also in out/results.json)."""
    cfg = make_config(config, **overrides)
    budget = Budget(cfg.budget, {}) if cfg.budget else None  # the clock starts
    out = RunDir(cfg.out)
    pre = pretrain_config(cfg)
    pre.out = str(out.stage("pretrain").path)
    if budget is not None:
        plan_budget(budget, cfg, pre, out)
    run_pretrain(pre, budget)  # resolves pre's model, sizes and normalisation in place
    pre_run = out.stage("pretrain")
    where = {"device": pre.device, "precision": pre.precision}
    if cfg.threads:
        where["threads"] = cfg.threads
    feats = frozen_features(pre_run.path, **where)  # once, for both probes
    results: dict[str, Any] = {
        "method": pre.method,
        "pretrain": pre_run.results().get("pretrain", {}),
        "knn": knn(feats),
        "linear": linear(feats),
    }
    ft = _stage(cfg, pre, out.stage("finetune"))
    ft.init = str(pre_run.path)
    results["finetune"] = run_finetune(ft, budget=budget)
    if cfg.baseline:
        scratch = _stage(cfg, pre, out.stage("scratch"))
        scratch.init = None
        scratch.epochs = cfg.epochs + cfg.finetune.epochs  # the same total epochs
        results["scratch"] = run_finetune(scratch, inherit=pre_run, budget=budget,
                                          stage="scratch")  # fmt: skip
    if is_main_process():  # under torchrun, one process writes
        ran = run_config(pre, ft, cfg.baseline)  # what ran, resolved, in the recipe's shape
        ran.out = str(out.path)
        out.write_config(ran)
        shutil.copyfile(pre_run.splits_file, out.splits_file)
        out.write_results(results)
        write_report(out, pre, results)
    return results


def plan_budget(budget: Budget, cfg, pre, out: RunDir) -> None:
    """budget=: the recipe's epochs of every stage, and how to time the stages after
    pre-training before they run (on pre-training's data, once its settings are resolved)."""
    budget.epochs = {"pre-training": cfg.epochs, **stage_epochs(cfg.finetune, "fine-tuning")}
    if cfg.baseline:
        scratch = dataclasses.replace(cfg.finetune, epochs=cfg.epochs + cfg.finetune.epochs)
        budget.epochs.update(stage_epochs(scratch, "scratch"))

    timings: dict[bool, float] = {}  # scratch trains as fine-tuning does: timed once for both

    def timed(second: bool):
        def epoch_seconds(data, rt) -> float:
            if second not in timings:
                ft = _stage(cfg, pre, out.stage("finetune"))
                ft = stage2_config(ft, rt.world_size) if second else ft
                timings[second] = probe(ft)(data, rt)
            return timings[second]

        return epoch_seconds

    for name in ("fine-tuning", "scratch"):  # the same model, recipe and so pace
        budget.probes[name], budget.probes[f"{name} stage 2"] = timed(False), timed(True)


def _stage(cfg, pre, run: RunDir) -> FinetuneConfig:
    """A fine-tuning config on the pre-trained architecture and normalisation."""
    c = finetune_config(cfg)
    c.out, c.model = str(run.path), pre.model
    c.img_size = c.img_size or pre.img_size
    c.data.mean, c.data.std = pre.data.mean, pre.data.std
    c.device, c.precision = pre.device, pre.precision
    return c


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def summary_table(results: dict) -> str:
    """The headline numbers as a Markdown table (printed by the CLI, opened by the report)."""
    header = "| model | epochs | minutes | test top-1 (last) | val top-1 | top-5 |"
    rows = [header, "|---" * 6 + "|"]
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
            f"{_pct(r.get('val_top1'))} | {_pct(r.get('top5'))} |"
        )
    return "\n".join(rows)


def stage_curves(out: RunDir, pretrain_epochs: int, method: str, prefix: str = ""):
    """The per-epoch records of an `idmm run` directory's stages, for `plots.plot_curves`, and
    the labels of the supervised ones (their loss gets its own axis). Fine-tuning continues the
    pre-training's epoch count, so the from-scratch baseline (with as many epochs in total) lines
    up with the IDMM curves on one axis."""
    pre, ft, scratch = (f"{prefix}{method} pre-training", f"{prefix}fine-tuning",
                        f"{prefix}supervised from scratch")  # fmt: skip
    runs = {
        pre: out.stage("pretrain").metrics(),
        ft: [
            {**r, "epoch": r["epoch"] + pretrain_epochs} if "epoch" in r else r
            for r in out.stage("finetune").metrics()
        ],  # fmt: skip
    }
    if out.stage("scratch").exists():
        runs[scratch] = out.stage("scratch").metrics()
    return runs, {ft, scratch}


def dataset_title(source: str) -> str:
    """A dataset as a plot title: a folder or file by its name, not its absolute path."""
    return Path(source).name if "/" in source else source


def write_report(out: RunDir, cfg, results: dict) -> None:
    """report.md: the numbers, the recipe, the curves and the confusion matrix."""
    method = display_name(cfg.method)
    runs, supervised = stage_curves(out, cfg.epochs, method)
    plots.plot_curves(runs, out.plots / "curves.png", title=dataset_title(cfg.data.source),
                      right=supervised)  # fmt: skip
    ft, knn_r, lin = results["finetune"], results["knn"], results["linear"]
    per_class = "\n".join(
        f"| {c} | {_pct(a)} |" for c, a in sorted(ft.get("per_class", {}).items())
    )
    f = finetune_config(out.read_config())
    recipe = get_method(cfg.method).describe(cfg)
    text = f"""# idmm report: {cfg.data.source}

{summary_table(results)}

Evaluated once on the test split ({ft["test_split"]}, {ft["test_images"]} images) after the last
epoch (the paper's protocol); {ft["train_images"]} training images. Choices are made on the
validation split; `splits.json` lists which images are in which split.

## Frozen {method} backbone

- kNN (cosine, k={knn_r["k"]}, T={knn_r["temperature"]}): **{_pct(knn_r["top1"])}**
- linear probe (lr {lin["best_lr"]} chosen on {lin["lr_chosen_on"]}): **{_pct(lin["top1"])}**

## Recipe

- model `{cfg.model}`, pre-training {cfg.epochs} epochs at {cfg.img_size}px, batch
  {cfg.batch_size}, lr {cfg.lr:.2e}, {cfg.aug.global_crops} global + {cfg.aug.local_crops} local
  crops (local at {cfg.aug.local_size}px), method `{cfg.method}`{", " + recipe if recipe else ""}
- fine-tuning {f.epochs} epochs at {ft["img_size"]}px, batch {f.batch_size}, base lr {f.base_lr},
  RandAugment {f.randaug_ops} ops m{f.randaug_magnitude}, Mixup (even epochs) alpha
  {f.mixup_alpha} / CutMix (odd epochs) alpha {f.cutmix_alpha}, label smoothing
  {f.label_smoothing}, drop-path {f.drop_path}
- {cfg.device}, {cfg.precision}; the full resolved settings are in `config.yaml`

## Curves

![training curves](plots/curves.png)

## Confusion matrix (fine-tuned, last epoch, test split)

![confusion matrix](finetune/plots/confusion.png)

| class | accuracy |
|---|---|
{per_class}
"""
    out.report_file.write_text(text)
