"""The few builders every command shares: config, runtime, data with its splits, model, method.

Commands (idmm.commands.*) are thin sequences of these; nothing here calls back into a command.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open

from . import auto, models
from .config import ConfigError, RunConfig, build_config, set_key
from .data import memmap
from .data import splits as splitting
from .data.cache import CachedData, build_cache
from .data.sources import DataError, Source, open_source, subset_per_class
from .engine.distributed import Runtime, barrier, rank_and_world, setup
from .engine.log import LOGGER, setup_logging
from .methods import Method, get_method
from .rundir import RunDir

LOG = logging.getLogger(LOGGER)


def make_config(config: Any = None, **overrides: Any) -> RunConfig:
    """A recipe config from an object, a YAML path or defaults, then keyword overrides."""
    if isinstance(config, RunConfig):
        for k, v in overrides.items():
            set_key(config, k, v)
    else:
        config = build_config(config, overrides)
    auto.resolve_epochs(config, lambda: training_source(config))
    return config


def runtime(cfg: Any) -> Runtime:
    """Device, precision and processes from the environment; the CPU thread count."""
    rt = setup(cfg.device, cfg.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return rt


def start_run(cfg: Any) -> tuple[Runtime, RunDir, logging.Logger]:
    """What every training command does first: the runtime, the checked run directory, its log,
    and the model and size resolved from the data."""
    rt = runtime(cfg)
    run = RunDir(cfg.out)
    run.start(cfg.resume, cfg.overwrite, rt.is_main)
    barrier(rt)  # no process reads the directory before rank 0 has cleared it
    log = setup_logging(run.log_file, rt.is_main)
    if rt.is_main:
        run.record_invocation()
    while auto.PENDING:
        log.info(auto.PENDING.pop(0))
    if cfg.model == "auto" or cfg.img_size is None:  # from the images' number and size
        cfg.model, cfg.img_size, local = auto.resolve_model(cfg, lambda: training_source(cfg))
        if local is not None:
            cfg.aug.local_size = local
    return rt, run, log


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """One dataset's splits, decoded: train (what trains and fills neighbour pools), val (what
    chooses), test (what reports; None when not asked for)."""

    train: CachedData
    val: CachedData | None
    test: CachedData | None
    splits: splitting.Splits
    name: str

    def describe(self) -> str:
        parts = [f"{len(self.train)} train"]
        for split, d in (("val", self.val), ("test", self.test)):
            if d is not None:
                parts.append(f"{len(d)} {split}")
        return ", ".join(parts)


def cached(cfg: Any, src: Source, size: int, progress: bool = False) -> CachedData:
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


def training_source(cfg: Any) -> Source:
    src = open_source(cfg.data.source, "train", cfg.data.root)
    if src is None:
        raise DataError(f"{cfg.data.source} has no training split")
    if cfg.data.subset_per_class:
        src = subset_per_class(src, cfg.data.subset_per_class, cfg.data.subset_seed)
    return src


def load_data(
    cfg: Any, run: RunDir | None, *, size: int | None = None, progress: bool = False,
    inherit: RunDir | None = None, with_test: bool = True,
) -> Dataset:  # fmt: skip
    """The training images split as `run` recorded (or `inherit`, a run on the same data, e.g.
    the pre-training a fine-tuning starts from), else as decided now and written to `run`'s
    splits.json; then each split decoded once (its own memory-mapped file when large)."""
    src = training_source(cfg)
    size = size or cfg.data.cache_size or cfg.img_size
    d = cfg.data
    own_test = None if d.test else open_source(d.source, "test", d.root)  # opened once
    splits = _splits(cfg, run, inherit, src, own_test is not None)
    if run is not None and rank_and_world()[0] == 0 and not run.splits_file.is_file():
        run.path.mkdir(parents=True, exist_ok=True)
        splits.save(run.splits_file, src)
    train = _part(cfg, src, splits.train, size, progress)
    val = _part(cfg, src, splits.val, size, progress) if splits.val else None
    if splits.val_from not in (splitting.HOLDOUT, "none"):
        val = _other(cfg, open_source(splits.val_from), train, progress, "data.val")
    test = None
    if with_test and splits.test_from == splitting.HOLDOUT:
        test = _part(cfg, src, splits.test, size, progress)
    elif with_test and splits.test_from == "dataset":
        test = _other(cfg, own_test, train, progress, "test split of")
    elif with_test and splits.test_from != "none":
        test = _other(cfg, open_source(splits.test_from), train, progress, "data.test")
    return Dataset(train, val, test, splits, src.name)


def _part(cfg, src: Source, positions: list[int], size: int, progress: bool) -> CachedData:
    """One split of `src`, decoded; `kept` holds positions in `src` (bad images skipped)."""
    labels = None if src.labels is None else [src.labels[i] for i in positions]
    part = Source(src.name, src.split, [src.items[i] for i in positions], labels,
                  list(src.classes), src.array)  # fmt: skip
    data = cached(cfg, part, size, progress)
    if len(data) < len(part):  # the warning lists them; train.log keeps the count
        skipped = [part.describe(i) for i in sorted(set(range(len(part))) - set(data.kept))]
        LOG.warning(f"skipped {len(skipped)} unreadable images (data.skip_bad=true): {skipped[:5]}")
    data.kept = [positions[k] for k in data.kept]
    return data


def _splits(cfg, run, inherit, src, has_own_test: bool) -> splitting.Splits:
    """The run's own recorded split, else the inherited one when it is of this dataset (both
    must still be what the data and settings give), else a new one."""
    d = cfg.data
    test_from = d.test or ("dataset" if has_own_test else None)
    decided = splitting.decide(src, seed=d.split_seed, val_fraction=d.val_fraction,
                               test_fraction=d.test_fraction, val_from=d.val,
                               test_from=test_from)  # fmt: skip
    if run is not None and run.splits_file.is_file():
        return splitting.check(run.splits(), decided, run.splits_file)
    if inherit is not None and inherit.splits_file.is_file():
        recorded = inherit.splits()
        if recorded.source == src.name or recorded.items_hash == decided.items_hash:
            return splitting.check(recorded, decided, inherit.splits_file)
    return decided  # another dataset (transfer), or a run without a recorded split


def _other(cfg, src: Source, train, progress, where) -> CachedData:
    """Another source (data.val, data.test, the dataset's test split) in the training classes."""
    return _relabel(cached(cfg, src, train.size, progress), train.classes, f"{where} {src.name}")


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


def auto_batch_size(num_images: int, world_size: int = 1) -> int:
    """The paper's 256 (about 8 steps an epoch on its 2,040 images), or on small data the largest
    power of two that leaves 6 steps an epoch (at least 1, never more than the images)."""
    per_process = max(1, num_images // world_size)
    size = 256
    while size > 1 and size * 6 > per_process:
        size //= 2
    return min(size, per_process)


def data_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    sample = images[:: max(1, images.shape[0] // 10000)].float() / 255
    mean = sample.mean((0, 2, 3))
    std = sample.std((0, 2, 3)).clamp(min=1e-3)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


# -- settings that depend on the data and the machine --------------------------------------------
def resolve(cfg: Any, rt: Runtime, train: CachedData | None) -> None:
    """Fill the "auto"/None settings every training stage has, so config.yaml says what ran."""
    auto_batch = cfg.batch_size is None
    if auto_batch and train is not None:
        cfg.batch_size = auto_batch_size(len(train), rt.world_size)
        LOG.info(f"batch_size=auto -> {cfg.batch_size} per process ({len(train)} training images "
                 f"on {rt.world_size} process(es): 256 as the paper, smaller where an epoch "
                 "would have fewer than 6 steps)")  # fmt: skip
    if train is not None:  # before lr is scaled by the batch: the check may halve it
        aug = getattr(cfg, "aug", None)  # fine-tuning: one view at img_size
        views = (
            [(1, cfg.img_size)]
            if aug is None
            else [
                (aug.global_crops, cfg.img_size),
                (aug.local_crops, aug.local_size or cfg.img_size),
            ]
        )
        model = models.create_backbone(cfg.model, cfg.img_size, dynamic_img_size=aug is not None)
        auto.check_memory(cfg, model, views, rt, auto_batch)
    cfg.global_batch_size = cfg.batch_size * rt.world_size
    if cfg.lr is None:
        cfg.lr = cfg.base_lr * cfg.global_batch_size / 256
    cfg.precision, cfg.device = rt.precision, str(rt.device)
    if train is not None and cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = data_stats(train.images)  # of the training split only
    elif cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- models --------------------------------------------------------------------------------------
def build_backbone(cfg: Any, num_classes: int = 0) -> torch.nn.Module:
    aug = getattr(cfg, "aug", None)  # fine-tuning has one crop size
    local = aug.local_size if aug is not None and aug.local_crops > 0 else None
    start = aug.progressive_from if aug is not None else None  # progressive resolution
    dynamic = local not in (None, cfg.img_size) or start not in (None, cfg.img_size)
    model = models.create_backbone(cfg.model, cfg.img_size, cfg.drop_path, dynamic, num_classes)
    ps = models.patch_size(model)
    sizes = (("img_size", cfg.img_size), ("aug.local_size", local), ("aug.progressive_from", start))
    for key, size in sizes:
        if ps and size and size % ps:
            # timm would silently drop the border pixels that do not fill a patch
            raise ConfigError(
                f"{key}={size} is not a multiple of {cfg.model}'s patch size {ps}; "
                f"use {size - size % ps} or {size + ps - size % ps}"
            )
    if ps is None:  # CNNs and PVTs downsample a lot: too small an input fails deep inside
        models.check_input_sizes(model, cfg.model, cfg.img_size, local, start)
    return model


def build_method(cfg: Any, rt: Runtime, num_images: int, num_classes: int,
                 name: str | None = None) -> Method:  # fmt: skip
    """Method `name` (default: cfg.method) around a fresh backbone, with its augmentation."""
    cls = get_method(name or cfg.method)
    backbone = build_backbone(cfg, num_classes if cls.classifier else 0)
    models.set_fused_attention(backbone, rt.device.type == "cuda")
    return cls(cfg, backbone, num_images, num_classes, cls.build_views(cfg))


def export_backbone(cfg: Any, backbone, path: Path, method: str, **extra: str) -> None:
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
        "method": method,
        **extra,
    }
    models.save_backbone(backbone, path, meta)


def read_meta(path: Path) -> dict[str, str]:
    """The metadata export_backbone wrote into a weights file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as e:
        raise ConfigError(f"{path} is not a readable safetensors file: {e}") from None
    if "model" not in meta or "img_size" not in meta:
        raise ConfigError(f"{path} was not written by idmm (no model/img_size metadata)")
    return meta
