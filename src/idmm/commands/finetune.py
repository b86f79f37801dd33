"""`idmm finetune`: supervised fine-tuning of a pre-trained backbone; without `init`, the
from-scratch baseline.

    idmm.finetune(data="fashion-mnist", subset_per_class=204, init="runs/fm", out="runs/fm-ft")

Both train the same timm classifier with the same recipe (`methods/supervised.py`) through the
same trainer as pre-training, so resume, DDP and checkpoints behave identically. The run uses the
splits of the pre-training it starts from (when on the same data): the validation split is
evaluated every `eval_every` epochs, the test split once, after the last epoch (the paper's
number is the last epoch's top-1).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models, plots
from ..builders import (
    Dataset,
    auto_batch_size,
    build_method,
    export_backbone,
    load_data,
    make_config,
    read_meta,
    resolve,
    start_run,
)
from ..config import (
    CommonConfig,
    ConfigError,
    FinetuneConfig,
    FinetuneSettings,
    finetune_config,
    set_key,
)
from ..data.cache import CachedData
from ..data.sources import DataError
from ..engine.budget import Budget
from ..engine.distributed import Runtime, barrier
from ..engine.log import use_bar
from ..engine.trainer import Trainer
from ..eval.features import extract_features
from ..eval.linear import edge_warning, linear_probe
from ..rundir import RunDir

# In `idmm finetune`, every fine-tuning key also works without its `finetune.` prefix
# (`epochs=50` is `finetune.epochs=50`): the command has no pre-training to configure.
FINETUNE_KEYS = {f.name for f in dataclasses.fields(FinetuneSettings)} - {
    f.name for f in dataclasses.fields(CommonConfig)
}


COMMON_KEYS = {f.name for f in dataclasses.fields(CommonConfig)} | {"subset_per_class", "finetune"}


def finetune(config: Any = None, **overrides: Any) -> dict:
    """Fine-tune `init` (a run directory) on `data`, or train from scratch without it. `config`
    is a recipe (its finetune.* keys apply), or a FinetuneConfig to run as it is."""
    if isinstance(config, FinetuneConfig):
        for k, v in overrides.items():
            set_key(config, k, v)
        return run_finetune(config)
    overrides = {(f"finetune.{k}" if k in FINETUNE_KEYS else k): v for k, v in overrides.items()}
    for key in overrides:
        if key.split(".")[0] not in COMMON_KEYS:
            raise ConfigError(
                f"idmm finetune: '{key}' is a pre-training key, which fine-tuning does not use; "
                f"the fine-tuning keys are {', '.join(sorted(FINETUNE_KEYS))} (with or without "
                "'finetune.') and the common ones (`idmm keys`)"
            )
    return run_finetune(finetune_config(make_config(config, **overrides)))


def run_finetune(cfg: FinetuneConfig, inherit: RunDir | None = None,
                 budget: Budget | None = None, stage: str = "fine-tuning") -> dict:  # fmt: skip
    """Fine-tuning with a built FinetuneConfig (`idmm run` calls this, with the budget of the
    whole command). Splits come from the run directory itself (resume), else `inherit` or the
    `init` run when on the same data."""
    own_budget = budget is None and cfg.budget
    if own_budget:
        budget = Budget(cfg.budget, {})  # its clock starts now; its stages are planned below
    weights = None
    if cfg.init:
        weights, init_run = find_weights(cfg.init)
        adopt_pretrained(cfg, read_meta(weights), weights)
        inherit = inherit or init_run
    rt, run, log = start_run(cfg)
    if cfg.data.cache_size is None:  # big enough for the evaluation's resize-then-crop
        cfg.data.cache_size = round(max(cfg.img_size, cfg.stage2_img_size or 0) / cfg.eval_crop)
    data = load_data(cfg, run, progress=rt.is_main and use_bar(cfg.progress), inherit=inherit)
    train = data.train
    if train.labels is None:
        raise DataError(f"fine-tuning needs labels; {cfg.data.source} has none")
    if len(train.classes) < 2:
        raise DataError(
            f"{cfg.data.source} has a single class ({train.classes[0]!r}): nothing to classify. "
            "Pre-training works on it; fine-tuning needs at least 2 class folders or labels"
        )
    resolve(cfg, rt, train)
    if rt.is_main:
        run.write_config(cfg)
    if own_budget:
        budget.epochs = stage_epochs(cfg, stage)
        if cfg.stage2_epochs:
            budget.probes[f"{stage} stage 2"] = probe(stage2_config(cfg, rt.world_size))
    result = train_stage(cfg, rt, 1, data, run, weights, log, budget, stage)
    if cfg.stage2_epochs:
        stage1 = result
        result = train_stage(stage2_config(cfg, rt.world_size), rt, 2, data, run.stage("stage2"),
                             run.model, log, budget, f"{stage} stage 2")  # fmt: skip
        if rt.is_main:
            run.update_results("finetune_stage1", stage1)
            run.update_results("finetune", result)
    return result


def stage_epochs(cfg, stage: str = "fine-tuning") -> dict[str, int]:
    """The recipe's epochs of fine-tuning's stages (budget=), named as run_finetune names them."""
    epochs = {stage: cfg.epochs}
    if cfg.stage2_epochs:
        epochs[f"{stage} stage 2"] = cfg.stage2_epochs
    return epochs


def probe(cfg: FinetuneConfig, steps: int = 3):
    """budget=: a function timing a fine-tuning epoch of `cfg` before it runs, on `steps` steps
    (after one to warm up) of a throwaway classifier (random weights) over the training data
    of the stage that asks (its labels, or zeros where it has none)."""

    def epoch_seconds(data: CachedData, rt: Runtime) -> float:
        c = copy.deepcopy(cfg)
        c.batch_size = min(c.batch_size or auto_batch_size(len(data), rt.world_size), len(data))
        c.lr, c.compile, c.ema = c.lr or 1e-3, False, 0.0
        c.epochs = 1  # the schedule's length does not change a step's time
        if c.data.mean is None:  # the values do not change the time
            c.data.mean, c.data.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        classes = data.classes if data.labels is not None else ["a", "b"]
        labels = data.labels if data.labels is not None else torch.zeros(len(data), dtype=int)
        data = dataclasses.replace(data, labels=labels, classes=classes)
        method = build_method(c, rt, len(data), len(classes), "supervised")
        with tempfile.TemporaryDirectory() as d:
            trainer = Trainer(c, method, data, rt, RunDir(d), logging.getLogger(__name__))
            rng, g = np.random.default_rng(0), torch.Generator(device=rt.device).manual_seed(0)
            idx = torch.arange(c.batch_size)
            trainer.train_step(idx, rng, g)  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(idx, rng, g)
            step_s = (time.perf_counter() - t0) / steps
        return step_s * trainer.steps_per_epoch

    return epoch_seconds


def find_weights(init: str | Path) -> tuple[Path, RunDir | None]:
    """The weights `init=` points at, and the run they belong to: a run directory (pre-training,
    fine-tuning or `idmm run`: its backbone, else its classifier) or a .safetensors file."""
    p = Path(init)
    if p.is_file():
        run = RunDir.find(p)
        return p, run if run.exists() else None
    run = RunDir(p)
    if not run.exists():
        raise ConfigError(
            f"init={init}: not a run directory (no config.yaml) nor a file; pass a finished "
            "`idmm pretrain` run directory or a .safetensors file written by idmm"
        )
    if run.kind == "finetune":
        found = run.classifier_weights()
        if found is None:
            raise ConfigError(f"init={init}: the fine-tuning run has no model.safetensors yet")
        return found, run
    return run.backbone_weights(), run.pretrained()


def adopt_pretrained(cfg: FinetuneConfig, meta: dict[str, str], weights: Path) -> None:
    """Architecture, size and normalisation come from the pre-trained weights."""
    if cfg.model not in ("auto", meta["model"]):
        raise ConfigError(
            f"model={cfg.model} but {weights} holds a {meta['model']}; leave model unset "
            "(auto) when fine-tuning a pre-trained backbone"
        )
    cfg.model = meta["model"]
    if cfg.img_size is None:
        cfg.img_size = int(meta["img_size"])
    if cfg.data.mean is None:
        cfg.data.mean = tuple(json.loads(meta["mean"]))
        cfg.data.std = tuple(json.loads(meta["std"]))


def stage2_config(cfg: FinetuneConfig, world_size: int) -> FinetuneConfig:
    """The second stage (the paper's 224 -> 448): the first stage's model at a higher size."""
    s2 = copy.deepcopy(cfg)
    s2.out = str(Path(cfg.out) / "stage2")
    s2.img_size = cfg.stage2_img_size or cfg.img_size
    s2.epochs, s2.base_lr, s2.stage2_epochs = cfg.stage2_epochs, cfg.stage2_base_lr, 0
    s2.batch_size = cfg.stage2_batch_size or cfg.batch_size  # resolved by then
    s2.global_batch_size = s2.batch_size * world_size
    s2.lr = s2.base_lr * s2.global_batch_size / 256
    s2.init, s2.head_init = str(Path(cfg.out) / "model.safetensors"), "random"
    return s2


@torch.no_grad()
def probe_head(cfg: FinetuneConfig, model, data: Dataset, rt: Runtime) -> dict:
    """LP-FT (Kumar et al., ICLR 2022): start the new head at a linear probe of the loaded
    backbone's features, its lr chosen on the validation split. A random head's first, large
    gradients otherwise flow into the backbone and scramble the pre-trained features."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"head_init=probe needs a linear classifier; {cfg.model} has "
            f"{type(head).__name__}. Use head_init=random"
        )
    args = (cfg.img_size, cfg.data.mean, cfg.data.std, rt, cfg.eval_batch_size)
    body = models.PreLogits(model)

    def feats(d: CachedData) -> torch.Tensor:
        return extract_features(body, d.images, *args, crop=cfg.eval_crop)

    train, lc = data.train, cfg.linear
    tr = feats(train)
    val = (feats(data.val), data.val.labels) if data.val is not None else (None, None)
    out = linear_probe(tr, train.labels, tr, train.labels, len(train.classes), lrs=tuple(lc.lrs),
                       epochs=lc.epochs, val_fraction=lc.val_fraction, seed=cfg.seed,
                       val_f=val[0], val_y=val[1])  # fmt: skip
    weight, bias = out["head"]
    head.weight.copy_(weight)
    head.bias.copy_(bias)
    return out


class Monitor:
    """Epoch hook: top-1/top-5 on the validation split (what chooses; the test split is
    evaluated once, at the end)."""

    def __init__(self, cfg: FinetuneConfig, model, val: CachedData | None, rt: Runtime):
        self.cfg, self.model, self.val, self.rt = cfg, model, val, rt

    def logits(self, d: CachedData) -> torch.Tensor:
        c = self.cfg
        args = (c.img_size, c.data.mean, c.data.std, self.rt, c.eval_batch_size)
        return extract_features(self.model, d.images, *args, crop=c.eval_crop)

    def __call__(self, epoch: int) -> dict:
        if self.val is None or (epoch % self.cfg.eval_every and epoch != self.cfg.epochs):
            return {}
        top1, top5 = topk_accuracy(self.logits(self.val), self.val.labels, (1, 5))
        if len(self.val.classes) <= 5:  # top-5 of 5 classes or fewer is 100%: says nothing
            return {"val_top1": top1}
        return {"val_top1": top1, "val_top5": top5}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return [float(hit[:, :k].any(1).float().mean()) for k in ks]


def train_stage(cfg: FinetuneConfig, rt, stage: int, data: Dataset, run: RunDir, weights,
                log, budget: Budget | None = None, name: str = "fine-tuning") -> dict:  # fmt: skip
    train = data.train
    run.path.mkdir(parents=True, exist_ok=True)
    if stage > 1 and rt.is_main:
        run.write_config(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, rt, len(train), len(train.classes), "supervised")
    method.to(rt.device)  # now, not in the Trainer: the linear probe runs the backbone first
    model = method.backbone
    origin = "from scratch"
    if weights is not None:
        fresh = models.load_pretrained(model, weights)
        origin = f"from {weights} (new: {', '.join(fresh) or 'nothing'})"
        resuming = cfg.resume and run.checkpoint.is_file()
        if fresh and cfg.head_init == "probe" and not resuming:  # else overwritten
            probe = probe_head(cfg, model, data, rt)
            origin += f", head from a linear probe ({probe['val_top1'] * 100:.1f}% on validation)"
            if warning := edge_warning(probe):
                log.warning(warning)
    test = data.test
    log.info(
        f"fine-tune stage {stage}: {cfg.model} at {cfg.img_size}px {origin}; {len(train)} "
        f"training images ({data.describe()}), {len(train.classes)} classes, {cfg.epochs} "
        f"epochs, batch {cfg.batch_size} x {rt.world_size}, lr {cfg.lr:.2e}; test split: "
        f"{data.splits.test_from} ({len(test) if test is not None else 0} images)"
    )
    monitor = Monitor(cfg, method.evaluated_backbone(), data.val, rt)  # ema>0: the average
    if budget is not None and test is not None:  # what its last stage keeps time for
        budget.evaluated[name] = len(test)
    summary = Trainer(cfg, method, train, rt, run, log, [monitor], budget, name).fit()
    result = finish_stage(cfg, rt, monitor, summary, data, run, weights, log)
    barrier(rt)  # the next stage or command reads what rank 0 just wrote
    return result


def finish_stage(cfg, rt, monitor: Monitor, summary, data: Dataset, run: RunDir, weights,
                 log) -> dict:  # fmt: skip
    """Rank 0: the one evaluation on test, the report, model file and results of one stage."""
    if not rt.is_main:
        return {}
    if not summary:  # a finished run resumed: keep what its training measured
        # (a two-stage run's own "finetune" entry is the second stage's; its first is stage1)
        before = run.results().get("finetune_stage1" if cfg.stage2_epochs else "finetune", {})
        keep = ("epochs", "final_loss", "time_s", "images_per_s", "peak_memory_mb")
        summary = {k: before[k] for k in keep if k in before}
    if data.test is None:
        raise DataError(f"{cfg.data.source}: no test split to evaluate on")
    result = classification_report(monitor.logits(data.test), data.test, run)
    result["test_split"] = data.splits.test_from
    seen = [r["val_top1"] for r in run.metrics() if "val_top1" in r]
    if seen:
        result.update(val_top1=seen[-1], val_top1_best=max(seen), val_images=len(data.val))
    result.update(summary, init=str(weights) if weights else None, img_size=cfg.img_size)
    result["train_images"] = len(data.train)
    save_classifier(cfg, monitor.model, data.train.classes, run.model)
    run.update_results("finetune", result)
    run.append_metrics({"eval": "finetune", **{k: result[k] for k in ("top1", "top5")}})
    val = f", val {result['val_top1'] * 100:.2f}%" if seen else ""
    top5 = "" if result["top5"] is None else f", top-5 {result['top5'] * 100:.2f}%"
    log.info(
        f"fine-tuned: test top-1 {result['top1'] * 100:.2f}% (last epoch){top5} "
        f"({result['test_images']} images){val}; model at {run.model}"
    )
    return result


def classification_report(logits, test: CachedData, run: RunDir) -> dict:
    """Top-1 and top-5 (last epoch), per-class accuracy and the confusion plot."""
    top1, top5 = topk_accuracy(logits, test.labels, (1, 5))
    matrix = plots.confusion_matrix(test.labels, logits.argmax(1), len(test.classes))
    per_class = plots.per_class_accuracy(matrix)
    plots.plot_confusion(matrix, test.classes, run.plots / "confusion.png")
    return {
        "top1": top1,
        "top5": top5 if len(test.classes) > 5 else None,  # shown only where it can miss
        "per_class": {c: float(a) for c, a in zip(test.classes, per_class) if a == a},
        "test_images": len(test),
    }


def save_classifier(cfg: FinetuneConfig, model, classes: list[str], path: Path) -> None:
    """Backbone and head with timm names, plus what `export` and `predict` need to use it."""
    method = "finetune" if cfg.init else "scratch"
    export_backbone(cfg, model, path, method, classes=json.dumps(classes),
                    eval_crop=str(cfg.eval_crop))  # fmt: skip
