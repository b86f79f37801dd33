"""`idmm pretrain`: self-supervised pre-training (IDMM by default) into a run directory.

    idmm.pretrain("configs/cpu/fmnist2040.yaml", out="runs/fm", epochs=20)

Trains on the training split only; with `knn_every=N` a kNN monitor reports accuracy on the
validation split, with the training split as the neighbour pool (as `idmm eval knn` does).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import models
from ..builders import (
    build_method,
    export_backbone,
    load_data,
    make_config,
    resolve,
    start_run,
)
from ..config import PretrainConfig, RunConfig, pretrain_config, set_key
from ..data.sources import DataError
from ..engine.budget import Budget
from ..engine.distributed import Runtime, barrier
from ..engine.log import use_bar
from ..engine.trainer import Trainer
from ..eval.features import extract_features
from ..eval.knn import headline_k, knn_top1
from ..methods import get_method
from ..rundir import RunDir


def pretrain(config: Any = None, **overrides: Any) -> dict:
    """Pre-train with a recipe (its `finetune.*` keys are ignored) and overrides, or with a
    PretrainConfig as it is."""
    if isinstance(config, PretrainConfig) and not isinstance(config, RunConfig):
        for k, v in overrides.items():
            set_key(config, k, v)
        return run_pretrain(config)
    return run_pretrain(pretrain_config(make_config(config, **overrides)))


def run_pretrain(cfg: Any, budget: Budget | None = None) -> dict:
    """Pre-training with a built PretrainConfig (`idmm run` calls this, with the budget of the
    whole command); returns its results."""
    if budget is None and cfg.budget:
        budget = Budget(cfg.budget, {})  # the only stage: all of it
    rt, run, log = start_run(cfg)
    data = load_data(cfg, run, progress=rt.is_main and use_bar(cfg.progress), with_test=False)
    resolve(cfg, rt, data.train)
    if cfg.aug.local_size is None:
        cfg.aug.local_size = cfg.img_size
    method_cls = get_method(cfg.method)
    method_cls.resolve(cfg, rt.device)
    train = data.train
    if method_cls.needs_labels and train.labels is None:
        raise DataError(f"method={cfg.method} needs labels; {cfg.data.source} has none")
    torch.manual_seed(cfg.seed)  # the initial weights; DDP then broadcasts rank 0's
    method = build_method(cfg, rt, len(train), len(train.classes))
    backbone = method.representation()  # supervised: the pre-logits
    hooks = []
    if cfg.knn_every and data.val is not None:
        hooks.append(KnnMonitor(cfg, backbone, train, data.val, rt))
    elif cfg.knn_every:
        log.info("knn_every is set but there is no labelled validation split: no kNN monitor")
    if cfg.snapshot_every and rt.is_main:
        hooks.append(Snapshots(cfg, backbone, run))
    if rt.is_main:
        run.write_config(cfg)
    log.info(
        f"pretrain {cfg.method} on {data.name}: {len(train)} training images "
        f"({data.splits.counts()}) at {train.size}px, model {cfg.model} "
        f"({models.count_params(backbone) / 1e6:.2f}M params) at {cfg.img_size}px, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size} x {rt.world_size}, lr {cfg.lr:.2e}, "
        f"{rt.device} {rt.precision}"
    )
    summary = Trainer(cfg, method, train, rt, run, log, hooks, budget, "pre-training").fit()
    results = {}
    if rt.is_main:
        export_backbone(cfg, backbone, run.backbone, cfg.method)
        if summary:  # empty when a finished run was resumed
            results = run.update_results("pretrain", summary)
        log.info(f"pre-training done; backbone at {run.backbone}")
    barrier(rt)  # evaluations and fine-tuning on other ranks read the backbone file
    return results


class KnnMonitor:
    """Epoch hook: kNN top-1 of the current features on the validation split, the training split
    as neighbours: the same numbers `idmm eval knn` computes offline from the saved backbone."""

    def __init__(self, cfg: Any, backbone, train, val, rt: Runtime):
        self.cfg, self.backbone, self.train, self.val, self.rt = cfg, backbone, train, val, rt
        self.k = headline_k(cfg.knn_k)

    def __call__(self, epoch: int) -> dict:
        c = self.cfg
        if epoch % c.knn_every and epoch != c.epochs:
            return {}
        args = (c.img_size, c.data.mean, c.data.std, self.rt, c.eval_batch_size)
        tr = extract_features(self.backbone, self.train.images, *args)
        va = extract_features(self.backbone, self.val.images, *args)
        acc = knn_top1(tr, self.train.labels, va, self.val.labels, (self.k,), c.knn_temperature)
        return {"knn_top1_val": acc[self.k]}


class Snapshots:
    """Epoch hook: the backbone every `snapshot_every` epochs (for `idmm analyze`)."""

    def __init__(self, cfg: Any, backbone, run: RunDir):
        self.cfg, self.backbone, self.run = cfg, backbone, run

    def __call__(self, epoch: int) -> dict:
        if epoch % self.cfg.snapshot_every == 0:
            path = self.run.snapshots / f"epoch_{epoch:04d}.safetensors"
            export_backbone(self.cfg, self.backbone, path, self.cfg.method)
        return {}
