"""Supervised fine-tuning of a pre-trained backbone; without `init`, the from-scratch baseline.

    idmm.finetune(data="fashion-mnist", subset_per_class=204, init="runs/fm", out="runs/fm-ft")

Both train the same timm classifier with the same recipe (`methods/supervised.py`) through the
same trainer as pre-training, so resume, DDP and checkpoints behave identically. The test split
is evaluated every `finetune.eval_every` epochs; the paper's number is the last epoch's top-1.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from . import models, plots
from .api import (
    build_method,
    export_backbone,
    load_test_data,
    load_train_data,
    make_config,
    resolve,
    start_run,
)
from .config import Config, ConfigError, save_yaml
from .data.cache import CachedData
from .data.sources import DataError
from .engine.checkpoint import read_results, update_results
from .engine.distributed import Runtime, barrier
from .engine.log import append_metrics, read_metrics, use_bar
from .engine.trainer import Trainer
from .eval.features import extract_features
from .eval.linear import linear_probe

# In `idmm finetune`, these top-level keys mean the fine-tuning ones (`epochs=50` is
# `finetune.epochs=50`): the command has no pre-training to configure.
FINETUNE_KEYS = (
    "epochs", "img_size", "batch_size", "lr", "base_lr", "min_lr", "weight_decay",
    "warmup_epochs", "drop_path",
)  # fmt: skip


def finetune(config: Config | str | Path | None = None, **overrides: Any) -> dict:
    """Fine-tune `init` (a pre-training run) on `data`, or train from scratch without it."""
    overrides = {(f"finetune.{k}" if k in FINETUNE_KEYS else k): v for k, v in overrides.items()}
    return run_finetune(make_config(config, **overrides))


def run_finetune(cfg: Config) -> dict:
    """Fine-tuning with a built config (`idmm run` calls this after pre-training)."""
    f = cfg.finetune
    weights = None
    if f.init:
        weights = find_weights(f.init)
        adopt_pretrained(cfg, read_meta(weights), weights)
    rt, run_dir, log = start_run(cfg)
    f.img_size = f.img_size or cfg.img_size
    if cfg.data.cache_size is None:  # big enough for the evaluation's resize-then-crop
        cfg.data.cache_size = round(max(f.img_size, f.stage2_img_size or 0) / f.eval_crop)
    data = load_train_data(cfg, progress=rt.is_main and use_bar(cfg.progress))
    if data.labels is None:
        raise DataError(f"fine-tuning needs labels; {cfg.data.source} has none")
    if len(data.classes) < 2:
        raise DataError(
            f"{cfg.data.source} has a single class ({data.classes[0]!r}): nothing to classify. "
            "Pre-training works on it; fine-tuning needs at least 2 class folders or labels"
        )
    train, test, split = load_test_data(cfg, data)
    resolve(cfg, rt, train)
    if rt.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    result = train_stage(cfg, rt, 1, train, test, split, run_dir, weights, log)
    if f.stage2_epochs:
        stage1 = result
        result = train_stage(
            cfg, rt, 2, train, test, split, run_dir / "stage2", run_dir / "model.safetensors", log
        )
        if rt.is_main:
            update_results(run_dir, "finetune_stage1", stage1)
            update_results(run_dir, "finetune", result)
    return result


def find_weights(init: str | Path) -> Path:
    """The weights `init=` points at: a run directory (pre-training, fine-tuning, or `idmm run`)
    or a .safetensors file."""
    p = Path(init)
    if p.is_file():
        return p
    for name in ("backbone.safetensors", "pretrain/backbone.safetensors", "model.safetensors"):
        if (p / name).is_file():
            return p / name
    raise ConfigError(
        f"finetune.init={init}: no backbone.safetensors or model.safetensors there; pass a "
        "finished `idmm pretrain` run directory or a .safetensors file written by idmm"
    )


def read_meta(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as e:
        raise ConfigError(f"{path} is not a readable safetensors file: {e}") from None
    if "model" not in meta or "img_size" not in meta:
        raise ConfigError(f"{path} was not written by idmm (no model/img_size metadata)")
    return meta


def adopt_pretrained(cfg: Config, meta: dict[str, str], weights: Path) -> None:
    """Architecture, pre-training size and normalisation come from the pre-trained weights."""
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


def stage_config(cfg: Config, stage: int, out: Path, world_size: int) -> Config:
    """The trainer's view of one fine-tuning stage: the finetune.* settings at the top level."""
    f = cfg.finetune
    ft = copy.deepcopy(cfg)
    ft.method, ft.out, ft.knn_every = "supervised", str(out), 0
    ft.aug.local_crops = 0
    size = f.img_size or cfg.img_size
    ft.img_size = size if stage == 1 else f.stage2_img_size or size
    ft.epochs = f.epochs if stage == 1 else f.stage2_epochs
    ft.base_lr = f.base_lr if stage == 1 else f.stage2_base_lr
    ft.batch_size, ft.min_lr, ft.weight_decay = f.batch_size, f.min_lr, f.weight_decay
    ft.warmup_epochs, ft.drop_path = f.warmup_epochs, f.drop_path
    ft.global_batch_size = ft.batch_size * world_size
    ft.lr = f.lr if stage == 1 and f.lr else ft.base_lr * ft.global_batch_size / 256
    return ft


@torch.no_grad()
def probe_head(cfg: Config, model, train: CachedData, rt: Runtime) -> float:
    """LP-FT (Kumar et al., ICLR 2022): start the new head at a linear probe of the loaded
    backbone's features. A random head's first, large gradients otherwise flow into the backbone
    and scramble the pre-trained features before the head is any good."""
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"finetune.head_init=probe needs a linear classifier; {cfg.model} has "
            f"{type(head).__name__}. Use finetune.head_init=random"
        )

    args = (cfg.img_size, cfg.data.mean, cfg.data.std, rt, cfg.eval_batch_size)
    crop = cfg.finetune.eval_crop
    feats = extract_features(models.PreLogits(model), train.images, *args, crop=crop)
    lc = cfg.linear
    out = linear_probe(feats, train.labels, feats, train.labels, len(train.classes),
                       lrs=tuple(lc.lrs), epochs=lc.epochs, val_fraction=lc.val_fraction,
                       seed=cfg.seed)  # fmt: skip
    weight, bias = out["head"]
    head.weight.copy_(weight)
    head.bias.copy_(bias)
    return max(out["val_top1_by_lr"].values())


class TestMonitor:
    """Epoch hook: top-1/top-5 on the evaluation split; keeps the last logits for the report."""

    def __init__(self, cfg: Config, model, test: CachedData, split: str, rt: Runtime):
        self.cfg, self.model, self.test, self.split, self.rt = cfg, model, test, split, rt
        self.logits, self.epoch = None, None

    def evaluate(self) -> torch.Tensor:
        c = self.cfg
        args = (c.img_size, c.data.mean, c.data.std, self.rt, c.eval_batch_size)
        return extract_features(self.model, self.test.images, *args, crop=c.finetune.eval_crop)

    def __call__(self, epoch: int) -> dict:
        if epoch % self.cfg.finetune.eval_every and epoch != self.cfg.epochs:
            return {}
        self.logits, self.epoch = self.evaluate(), epoch
        top1, top5 = topk_accuracy(self.logits, self.test.labels, (1, 5))
        return {f"{self.split}_top1": top1, f"{self.split}_top5": top5}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return [float(hit[:, :k].any(1).float().mean()) for k in ks]


def train_stage(cfg, rt, stage, train, test, split, out: Path, weights, log) -> dict:
    ft = stage_config(cfg, stage, out, rt.world_size)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    method = build_method(ft, rt, len(train), len(train.classes))
    model = method.backbone
    origin = "from scratch"
    if weights is not None:
        fresh = models.load_pretrained(model, weights)
        origin = f"from {weights} (new: {', '.join(fresh) or 'nothing'})"
        resuming = ft.resume and (out / "checkpoints" / "last.ckpt").is_file()
        if fresh and ft.finetune.head_init == "probe" and not resuming:  # else overwritten
            acc = probe_head(ft, model, train, rt)
            origin += f", head from a linear probe ({acc * 100:.1f}% on held-out train images)"
    log.info(
        f"fine-tune stage {stage}: {ft.model} at {ft.img_size}px {origin}; {len(train)} "
        f"images, {len(train.classes)} classes, {ft.epochs} epochs, batch {ft.batch_size} x "
        f"{rt.world_size}, lr {ft.lr:.2e}; evaluated on {split} ({len(test)} images)"
    )
    monitor = TestMonitor(ft, model, test, split, rt)
    summary = Trainer(ft, method, train, rt, out, log, [monitor]).fit()
    result = finish_stage(ft, rt, monitor, summary, train, test, split, out, weights, log)
    barrier(rt)  # the next stage or command reads what rank 0 just wrote
    return result


def finish_stage(ft, rt, monitor, summary, train, test, split, out, weights, log) -> dict:
    """Rank 0: the final evaluation, report, model file and results of one stage."""
    if not rt.is_main:
        return {}
    model = monitor.model
    if not summary:  # a finished run resumed: keep what its training measured
        before = read_results(out).get("finetune", {})
        keep = ("epochs", "final_loss", "time_s", "images_per_s", "peak_memory_mb")
        summary = {k: before[k] for k in keep if k in before}
    logits = monitor.logits if monitor.epoch == ft.epochs else monitor.evaluate()
    result = classification_report(logits, test, split, out)
    result.update(summary, init=str(weights) if weights else None, img_size=ft.img_size)
    result["train_images"] = len(train)
    save_classifier(ft, model, train.classes, out / "model.safetensors")
    update_results(out, "finetune", result)
    append_metrics(out, {"eval": "finetune", **{k: result[k] for k in ("top1", "top5")}})
    log.info(
        f"fine-tuned top-1 {result['top1'] * 100:.2f}% (last epoch), best "
        f"{result['top1_best'] * 100:.2f}%, top-5 {result['top5'] * 100:.2f}% on {split}; "
        f"model at {out / 'model.safetensors'}"
    )
    return result


def classification_report(logits, test: CachedData, split: str, out: Path) -> dict:
    """Top-1 (last epoch), best top-1 over the run, top-5, per-class accuracy, confusion plot."""
    top1, top5 = topk_accuracy(logits, test.labels, (1, 5))
    seen = [r[f"{split}_top1"] for r in read_metrics(out) if f"{split}_top1" in r]
    matrix = plots.confusion_matrix(test.labels, logits.argmax(1), len(test.classes))
    per_class = plots.per_class_accuracy(matrix)
    plots.plot_confusion(matrix, test.classes, out / "plots" / "confusion.png")
    return {
        "top1": top1,
        "top1_best": max([top1, *seen]),
        "top5": top5,
        "per_class": {c: float(a) for c, a in zip(test.classes, per_class) if a == a},
        "test_split": split,
        "test_images": len(test),
    }


def save_classifier(cfg: Config, model, classes: list[str], path: Path) -> None:
    """Backbone and head with timm names, plus what `export` and `predict` need to use it."""
    export_backbone(
        cfg, model, path, classes=json.dumps(classes), eval_crop=str(cfg.finetune.eval_crop)
    )
