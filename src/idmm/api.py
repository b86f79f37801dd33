"""The Python API. The CLI is a thin layer over these functions, with the same key names:

    idmm.pretrain(data="fashion-mnist", subset_per_class=204, out="runs/fm", epochs=50)
    idmm.evaluate_knn("runs/fm")

Keyword arguments are config keys; nested sections take a dict (`aug={"local_size": 16}`) or a
dotted key passed through `**{"aug.local_size": 16}`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import models
from .config import (
    Config,
    ConfigError,
    build_config,
    from_dict,
    load_yaml,
    save_yaml,
    set_key,
    to_dict,
)
from .data import memmap
from .data.cache import CachedData, build_cache
from .data.sources import DataError, open_source, subset_per_class
from .engine.checkpoint import update_results
from .engine.distributed import Runtime, barrier, rank_and_world, setup
from .engine.log import LOGGER, append_metrics, setup_logging, use_bar
from .engine.trainer import Trainer
from .eval.features import extract_features
from .eval.knn import headline_k, knn_top1
from .eval.linear import linear_probe
from .methods import Method, get_method


def make_config(config: Config | str | Path | None = None, **overrides: Any) -> Config:
    """A Config from an object, a YAML recipe path or defaults, then keyword overrides."""
    if isinstance(config, Config):
        cfg = config
        for k, v in overrides.items():
            set_key(cfg, k, v)
        return cfg
    return build_config(config, overrides)


# -- data ----------------------------------------------------------------------------------------
def cached(cfg: Config, src, size: int, progress: bool = False) -> CachedData:
    """The decoded cache: in memory, or past data.memmap_gb a memory-mapped file that the first
    process of each node builds while the others wait, then all of them map."""
    if len(src) * 3 * size * size <= cfg.data.memmap_gb * 2**30:
        return build_cache(src, size, cfg.data.skip_bad, progress)
    store = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else memmap.DEFAULT_DIR
    ranks = rank_and_world()[1] > 1
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if ranks and not first:
        dist.barrier()  # wait for this node's first process to build the file
    data = build_cache(src, size, cfg.data.skip_bad, progress and first, store)
    if ranks and first:
        dist.barrier()
    return data


def load_train_data(cfg: Config, progress: bool = False) -> CachedData:
    src = open_source(cfg.data.source, "train", cfg.data.root)
    if src is None:
        raise DataError(f"{cfg.data.source} has no training split")
    if cfg.data.subset_per_class:
        src = subset_per_class(src, cfg.data.subset_per_class, cfg.data.subset_seed)
    data = cached(cfg, src, cfg.data.cache_size or cfg.img_size, progress)
    if len(data) < len(src):  # the warning lists them; train.log keeps the count
        kept = set(data.kept)
        skipped = [src.describe(i) for i in range(len(src)) if i not in kept]
        logging.getLogger(LOGGER).warning(
            f"skipped {len(skipped)} unreadable images (data.skip_bad=true): {skipped[:5]}"
        )
    return data


def load_test_data(cfg: Config, train: CachedData, progress: bool = False):
    """The dataset's own test split, or, when it has none, a seeded stratified 20% of `train`.

    A user-given `data.val` (folder or CSV with the same class names) replaces both. Returns
    (train, test, split name); with a hold-out, `train` loses the held-out images.
    """
    if cfg.data.val:
        val = cached(cfg, open_source(cfg.data.val), train.size, progress)
        return train, _relabel(val, train.classes, f"data.val={cfg.data.val}"), "val"
    src = open_source(cfg.data.source, "test", cfg.data.root)
    if src is not None:  # its labels in the training classes' indices, matched by name
        test = cached(cfg, src, train.size, progress)
        return train, _relabel(test, train.classes, f"{cfg.data.source} (test split)"), "test"
    if train.labels is None:
        raise DataError(f"{cfg.data.source} has no labels, so it cannot be evaluated")
    rng = np.random.default_rng(cfg.seed)
    hold = []
    for c in range(len(train.classes)):
        idx = np.flatnonzero(train.labels.numpy() == c)
        hold += list(rng.permutation(idx)[: max(1, len(idx) // 5)])
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[torch.tensor(sorted(hold))] = True
    return _select(train, ~mask), _select(train, mask), "holdout"


def _relabel(d: CachedData, classes: list[str], where: str) -> CachedData:
    """Express `d`'s labels in the training set's class indices (matched by name)."""
    if d.labels is None:
        raise DataError(f"{where} has no labels; use a folder with class sub-folders")
    unknown = sorted(set(d.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{where} has classes the training data lacks: {unknown[:5]}; "
            f"the training classes are {classes[:10]}"
        )
    lut = torch.tensor([classes.index(c) for c in d.classes])
    return CachedData(d.images, lut[d.labels], classes, d.size, d.source_name, d.kept)


def _select(d: CachedData, mask: torch.Tensor) -> CachedData:
    kept = [k for k, m in zip(d.kept, mask.tolist()) if m]
    return CachedData(
        d.images[mask].contiguous(), d.labels[mask], d.classes, d.size, d.source_name, kept
    )


def data_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    sample = images[:: max(1, images.shape[0] // 10000)].float() / 255
    mean = sample.mean((0, 2, 3))
    std = sample.std((0, 2, 3)).clamp(min=1e-3)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


# -- runs ----------------------------------------------------------------------------------------
def resolve(cfg: Config, rt: Runtime, data: CachedData | None) -> None:
    """Fill every "auto"/None setting with its value, so config.yaml says what really ran."""
    cfg.model, cfg.img_size = models.resolve_model(cfg.model, cfg.img_size, cfg.data.source)
    if cfg.aug.local_size is None:
        cfg.aug.local_size = cfg.img_size
    cfg.global_batch_size = cfg.batch_size * rt.world_size
    if cfg.lr is None:
        cfg.lr = cfg.base_lr * cfg.global_batch_size / 256
    cfg.precision, cfg.device = rt.precision, str(rt.device)
    if cfg.method == "dino" and cfg.dino.out_dim is None:
        cfg.dino.out_dim = 65536 if rt.device.type == "cuda" else 4096  # the paper's on a GPU
    if data is not None and cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = data_stats(data.images)
    elif cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# What a pre-training run writes besides config.yaml; `overwrite=true` removes it first.
RUN_OUTPUTS = (
    "checkpoints", "metrics.jsonl", "results.json", "backbone.safetensors", "train.log",
    "model.safetensors", "plots", "stage2", "export", "snapshots",
)  # fmt: skip


def prepare_run_dir(cfg: Config, rt: Runtime) -> Path:
    run_dir = Path(cfg.out)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.exists() and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run; pass resume=true to continue it, overwrite=true "
                "to start it again, or choose another out="
            )
        if rt.is_main:
            for name in RUN_OUTPUTS:
                p = run_dir / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return run_dir


def build_backbone(cfg: Config, num_classes: int = 0) -> torch.nn.Module:
    dynamic = cfg.aug.local_crops > 0 and cfg.aug.local_size not in (None, cfg.img_size)
    model = models.create_backbone(cfg.model, cfg.img_size, cfg.drop_path, dynamic, num_classes)
    ps = models.patch_size(model)
    for key, size in (("img_size", cfg.img_size), ("aug.local_size", cfg.aug.local_size)):
        if ps and size and size % ps:
            # timm would silently drop the border pixels that do not fill a patch
            raise ConfigError(
                f"{key}={size} is not a multiple of {cfg.model}'s patch size {ps}; "
                f"use {size - size % ps} or {size + ps - size % ps}"
            )
    if ps is None:  # CNNs and PVTs downsample a lot: too small an input fails deep inside
        models.check_input_sizes(model, cfg.model, cfg.img_size, cfg.aug.local_size)
    return model


def build_method(cfg: Config, rt: Runtime, num_images: int, num_classes: int) -> Method:
    """The configured method around a fresh backbone, with its batched augmentation."""
    cls = get_method(cfg.method)
    backbone = build_backbone(cfg, num_classes if cls.classifier else 0)
    models.set_fused_attention(backbone, rt.device.type == "cuda")
    return cls(cfg, backbone, num_images, num_classes, cls.build_views(cfg))


def knn_monitor(cfg: Config, backbone, train: CachedData, rt: Runtime):
    """An epoch hook: kNN top-1 of the current features on up to 2,000 test images."""
    _, test, split = load_test_data(cfg, train)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:2000]
    test_images, test_labels = test.images[pick], test.labels[pick]
    k = headline_k(cfg.knn_k)

    def hook(epoch: int) -> dict:
        if epoch % cfg.knn_every and epoch != cfg.epochs:
            return {}
        args = (cfg.img_size, cfg.data.mean, cfg.data.std, rt, cfg.eval_batch_size)
        tr = extract_features(backbone, train.images, *args)
        te = extract_features(backbone, test_images, *args)
        acc = knn_top1(tr, train.labels, te, test_labels, (k,), cfg.knn_temperature)[k]
        return {f"knn_top1_{split}": acc}

    return hook


def snapshots(cfg: Config, backbone, run_dir: Path):
    """An epoch hook: the backbone every `snapshot_every` epochs (for `idmm analyze`)."""

    def hook(epoch: int) -> dict:
        if epoch % cfg.snapshot_every == 0:
            export_backbone(cfg, backbone, run_dir / "snapshots" / f"epoch_{epoch:04d}.safetensors")
        return {}

    return hook


def runtime(cfg: Config) -> Runtime:
    """Device, precision and processes from the environment; the CPU thread count."""
    rt = setup(cfg.device, cfg.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return rt


def start_run(cfg: Config) -> tuple[Runtime, Path, Any]:
    """What every training command does first: the runtime, the checked run directory, its
    log, and the model and size resolved from the data."""
    rt = runtime(cfg)
    run_dir = prepare_run_dir(cfg, rt)
    log = setup_logging(run_dir, rt.is_main)
    cfg.model, cfg.img_size = models.resolve_model(cfg.model, cfg.img_size, cfg.data.source)
    return rt, run_dir, log


def pretrain(config: Config | str | Path | None = None, **overrides: Any) -> dict:
    """Self-supervised pre-training (IDMM by default) into the run directory `out`."""
    cfg = make_config(config, **overrides)
    rt, run_dir, log = start_run(cfg)
    data = load_train_data(cfg, progress=rt.is_main and use_bar(cfg.progress))
    resolve(cfg, rt, data)
    if get_method(cfg.method).needs_labels and data.labels is None:
        raise DataError(f"method={cfg.method} needs labels; {cfg.data.source} has none")
    torch.manual_seed(cfg.seed)  # the initial weights; DDP then broadcasts rank 0's
    method = build_method(cfg, rt, len(data), len(data.classes))
    backbone = method.representation()  # DINO: the teacher; supervised: the pre-logits
    hooks = []
    if cfg.knn_every and data.labels is not None:
        hooks.append(knn_monitor(cfg, backbone, data, rt))
    if cfg.snapshot_every and rt.is_main:
        hooks.append(snapshots(cfg, backbone, run_dir))
    if rt.is_main:
        save_yaml(cfg, run_dir / "config.yaml")
    log.info(
        f"pretrain {cfg.method} on {data.source_name}: {len(data)} images at {data.size}px, "
        f"model {cfg.model} ({models.count_params(backbone) / 1e6:.2f}M params) "
        f"at {cfg.img_size}px, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size} x {rt.world_size}, lr {cfg.lr:.2e}, "
        f"{rt.device} {rt.precision}"
    )
    summary = Trainer(cfg, method, data, rt, run_dir, log, hooks).fit()
    results = {}
    if rt.is_main:
        export_backbone(cfg, backbone, run_dir / "backbone.safetensors")
        if summary:  # empty when a finished run was resumed
            results = update_results(run_dir, "pretrain", summary)
        log.info(f"pre-training done; backbone at {run_dir / 'backbone.safetensors'}")
    barrier(rt)  # evaluations and fine-tuning on other ranks read the backbone file
    return results


def export_backbone(cfg: Config, backbone, path: Path, **extra: str) -> None:
    """Weights with timm names, and in the file's metadata how to rebuild and feed the model."""
    arch, kwargs = models.PRESETS.get(cfg.model, (cfg.model, {}))
    meta = {
        "model": cfg.model,
        "timm_arch": arch,
        # a class argument (ConvStem) is written as its import path
        "timm_kwargs": json.dumps(kwargs, default=lambda c: f"{c.__module__}.{c.__qualname__}"),
        "img_size": str(cfg.img_size),
        "mean": json.dumps(list(cfg.data.mean)),
        "std": json.dumps(list(cfg.data.std)),
        "method": cfg.method,
        **extra,
    }
    models.save_backbone(backbone, path, meta)


def load_run_config(run: str | Path) -> tuple[Path, Config]:
    run_dir = Path(run)
    if run_dir.is_file():  # backbone.safetensors or checkpoints/last.ckpt of a run
        run_dir = run_dir.parent
        if run_dir.name == "checkpoints":
            run_dir = run_dir.parent
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not an idmm run directory (no config.yaml); "
            "pass checkpoint=RUN_DIR of a finished `idmm pretrain`"
        )
    return run_dir, from_dict(load_yaml(run_dir / "config.yaml"))


def frozen_features(checkpoint: str | Path, overrides: dict[str, Any]):
    """Features of a pre-trained backbone on the train and test images, computed once.

    Returns (run_dir, cfg, log, is_main, features) with features = (train_f, train_y, test_f,
    test_y, train, test, split). Under torchrun every process evaluates; only rank 0 writes."""
    run_dir, cfg = load_run_config(checkpoint)
    cfg.device, cfg.precision = "auto", "auto"  # where it runs now, not where it was trained
    if {"data", "data.source"} & set(overrides):
        # another dataset: the run's subset and root belong to the run's data, not to this one
        cfg.data.subset_per_class, cfg.data.root = None, None
    for k, v in overrides.items():
        set_key(cfg, k, v)
    rt = runtime(cfg)
    log = setup_logging(run_dir, rt.is_main)
    weights = run_dir / "backbone.safetensors"
    if not weights.is_file():
        raise ConfigError(
            f"{weights} not found: the run has not finished pre-training "
            "(resume it with `idmm pretrain out=... resume=true`)"
        )
    # kNN then linear on the same backbone and data (as `idmm run` does) reuse the features
    key = json.dumps([str(weights.resolve()), weights.stat().st_mtime_ns, to_dict(cfg.data),
                      cfg.model, cfg.img_size, cfg.seed, str(rt.device)])  # fmt: skip
    if _FEATURES.get("key") != key:
        backbone = models.create_backbone(cfg.model, cfg.img_size).to(rt.device)
        models.load_backbone_weights(backbone, weights)
        train = load_train_data(cfg)
        if train.labels is None:
            raise DataError(f"{cfg.data.source} has no labels; evaluation needs a labelled set")
        train, test, split = load_test_data(cfg, train)
        args = (cfg.img_size, cfg.data.mean, cfg.data.std, rt, cfg.eval_batch_size)
        tr = extract_features(backbone, train.images, *args)
        te = extract_features(backbone, test.images, *args)
        _FEATURES.clear()
        _FEATURES.update(key=key, value=(tr, train.labels, te, test.labels, train, test, split))
    return run_dir, cfg, log, rt.is_main, _FEATURES["value"]


_FEATURES: dict[str, Any] = {}  # the last features computed, keyed by weights, data and model


def _record(run_dir: Path, name: str, result: dict) -> None:
    update_results(run_dir, name, result)
    append_metrics(run_dir, {"eval": name, **result})


def evaluate_knn(checkpoint: str | Path, **overrides: Any) -> dict:
    """Weighted cosine kNN of a pre-trained backbone; writes results.json['knn'] in its run dir."""
    run_dir, cfg, log, is_main, (tr, tr_y, te, te_y, train, test, split) = frozen_features(
        checkpoint, overrides
    )
    by_k = knn_top1(tr, tr_y, te, te_y, cfg.knn_k, cfg.knn_temperature)
    k = headline_k(cfg.knn_k)
    result = {
        "top1": by_k[k],
        "k": k,
        "top1_by_k": {str(kk): v for kk, v in by_k.items()},
        "temperature": cfg.knn_temperature,
        "data": cfg.data.source,
        "train_images": len(train),
        "test_images": len(test),
        "test_split": split,
    }
    if is_main:
        _record(run_dir, "knn", result)
    table = "  ".join(f"k={kk}: {v * 100:.2f}%" for kk, v in by_k.items())
    log.info(
        f"kNN top-1 on {cfg.data.source} {split} ({len(test)} images, {len(train)} "
        f"neighbours pool): {table}"
    )
    return result


def evaluate_linear(checkpoint: str | Path, **overrides: Any) -> dict:
    """Linear probe on frozen, cached features: the lr grid trains in one pass, the lr is chosen
    on a held-out part of the training images; writes results.json['linear']."""
    run_dir, cfg, log, is_main, (tr, tr_y, te, te_y, train, test, split) = frozen_features(
        checkpoint, overrides
    )
    lc = cfg.linear
    out = linear_probe(
        tr, tr_y, te, te_y, len(train.classes), lrs=tuple(lc.lrs), epochs=lc.epochs,
        val_fraction=lc.val_fraction, seed=cfg.seed,
    )  # fmt: skip
    out.pop("predictions", None)
    out.pop("head", None)
    result = {**out, "data": cfg.data.source, "test_split": split}
    if is_main:
        _record(run_dir, "linear", result)
    grid = "  ".join(f"lr {lr}: {v * 100:.2f}%" for lr, v in out["val_top1_by_lr"].items())
    log.info(
        f"linear probe on {cfg.data.source}: held-out train accuracy {grid}; lr {out['best_lr']}"
        f" -> {split} top-1 {out['top1'] * 100:.2f}% ({len(test)} images)"
    )
    return result
