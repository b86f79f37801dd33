"""Typed configuration: nested dataclasses are the schema.

A config is built from defaults, then an optional YAML recipe, then `key=value` overrides (CLI) or
keyword arguments (Python API), in that order. Unknown keys and values of the wrong type raise a
ConfigError that names the key and lists the valid ones, so a typo never silently trains the wrong
thing. "auto" values are resolved later (see `resolve`) and the resolved config is what a run
directory records.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_types import ConfigError, coerce
from .eval.linear import DEFAULT_LRS


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # a folder, a CSV of path,label, or a dataset name
    root: str | None = None  # where a named dataset lives on disk
    subset_per_class: int | None = None  # class-balanced subset (204 on FMNIST = FMNIST-2040)
    subset_seed: int = 0
    skip_bad: bool = False  # skip unreadable images with a warning instead of failing
    cache_size: int | None = None  # decode resolution; None = the training image size
    # A decoded set larger than this many GiB goes to a memory-mapped file in cache_dir
    # (default ~/.cache/idmm or $IDMM_CACHE), built once and reused while the source is unchanged.
    memmap_gb: float = 4.0
    cache_dir: str | None = None
    # A folder or CSV to evaluate on when the dataset has no test split of its own; without
    # one, a seeded stratified 20% of the training images is held out.
    val: str | None = None
    # Normalisation; None = the per-channel mean/std of the cached training images (recorded
    # in the resolved config so evaluation and fine-tuning use the same numbers).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class AugConfig:
    global_crops: int = 2
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size: int | None = None  # None = the global crop size (the official code's choice)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # Blur sigma in pixels of a 112-px crop (the paper's resolution); scaled with the crop size so
    # that a 28-px Fashion-MNIST crop is blurred as much, relatively, as a 112-px photo.
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5


@dataclass
class IDMMConfig:
    cutmix_alpha: float = 0.5
    cutmix_p: float = 1.0  # the paper mixes every batch
    label_smoothing: float = 0.1
    head_lr_scale: float = 1.0  # lr multiplier of the N-way instance head
    # "random" (the paper: trunc-normal rows) or "imprint": row i starts as image i's own
    # feature, scaled so logits start as cosine similarities / imprint_temperature.
    head_init: str = "random"
    imprint_temperature: float = 0.1
    # Under torchrun: each process holds N/K rows of the head and the softmax is computed across
    # processes (for large N, e.g. ImageNet's 1.28M instances); results equal the replicated head.
    shard_head: bool = False


@dataclass
class ContrastiveConfig:
    """SimCLR and SupCon: one multi-positive InfoNCE loss on projected, L2-normalised features."""

    temperature: float = 0.2
    proj_hidden_dim: int = 512  # projection MLP: Linear, ReLU, Linear (no BatchNorm: with
    proj_dim: int = 128  # several processes it would make K x B differ from 1 x K*B)


@dataclass
class DINOConfig:
    """DINO (Caron et al. 2021) as the paper's baseline: teacher temperature 0.04, momentum
    0.996; its crops (112 px, globals (0.4, 1), 2 locals) are in configs/paper/*dino*.yaml."""

    out_dim: int | None = None  # prototypes; None = 65536 on CUDA (the paper's), 4096 on CPU
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linear warm-up of the teacher temperature from this
    warmup_teacher_temp_epochs: int = 0  # ... over this many epochs
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # EMA momentum, raised to 1 on a cosine over training


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning (DeiT recipe, as the paper). Also the from-scratch baseline."""

    init: str | None = None  # a pre-training run dir or its backbone.safetensors; None = scratch
    epochs: int = 100
    img_size: int | None = None  # None = the pre-training img_size (the paper: 112 -> 224)
    batch_size: int = 256
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-3
    warmup_epochs: float = 2.0
    drop_path: float = 0.1
    # "random" (the paper) or "probe": with init=, the new head starts as a linear probe of the
    # pre-trained features (LP-FT), so its first gradients do not scramble them
    head_init: str = "random"
    label_smoothing: float = 0.1
    # lambda ~ Beta(alpha, alpha) forced >= 0.5, as the official code; alpha 0 turns either off
    mixup_alpha: float = 0.5  # Mixup on even epochs (0-based) ...
    cutmix_alpha: float = 0.5  # ... CutMix on odd ones
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    randaug_ops: int = 2  # RandAugment ops per image (0 = off) ...
    randaug_magnitude: tuple[float, float] = (1.0, 9.0)  # ... magnitude ~ U(lo, hi) of 10 ...
    randaug_p: float = 0.5  # ... each op applied with this probability (UDA RandAugment)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    color_jitter_p: float = 0.4
    grayscale_p: float = 0.2
    eval_crop: float = 0.875  # evaluation: resize to size / eval_crop, then centre crop
    eval_every: int = 1  # test accuracy every N epochs (and always after the last)
    # An optional second stage at a higher resolution (the paper's 224 -> 448), starting from
    # the first stage's model; 0 epochs = no second stage.
    stage2_img_size: int | None = None
    stage2_epochs: int = 0
    stage2_base_lr: float = 1e-4  # the paper: lr 5e-5 at batch 128


@dataclass
class LinearConfig:
    """Linear probe on frozen features: every lr of the grid trains in one pass."""

    lrs: tuple[float, ...] = DEFAULT_LRS  # SGD on standardised features
    epochs: int = 100
    val_fraction: float = 0.2  # held out from the training images to choose the lr


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/idmm"
    method: str = "idmm"
    model: str = "auto"  # any timm model name or a preset from idmm.models.PRESETS
    img_size: int | None = None  # None = auto (28 for Fashion-MNIST, 112 otherwise)
    epochs: int = 100
    batch_size: int = 256
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 1e-3
    warmup_epochs: float = 2.0
    clip_grad: float | None = None
    drop_path: float = 0.1
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    compile: bool = False  # torch.compile the training forward (GPU speed; ~30 s per new shape)
    # Recorded, not set: batch_size x processes (under torchrun), which `lr` was scaled by.
    global_batch_size: int | None = None
    resume: bool = False  # continue out/checkpoints/last.ckpt exactly
    # A NaN/inf loss stops training (the last good checkpoint is kept); true skips the step
    # instead and counts it (metrics.jsonl, results.json: skipped_steps).
    skip_nonfinite: bool = False
    overwrite: bool = False  # start afresh in an out= that already holds a run
    knn_every: int = 0  # online kNN monitor every N epochs (0 = off); needs labels
    snapshot_every: int = 0  # pre-training: snapshots/epoch_N.safetensors every N epochs
    knn_k: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    eval_batch_size: int = 512
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log
    # `idmm run` only: also train the classifier from scratch for as many epochs as
    # pre-training + fine-tuning, the supervised baseline the report compares against.
    baseline: bool = False
    aug: AugConfig = field(default_factory=AugConfig)
    idmm: IDMMConfig = field(default_factory=IDMMConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)


CHOICES = {
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "progress": ("auto", "bar", "log"),
    "idmm.head_init": ("random", "imprint"),
    "finetune.head_init": ("random", "probe"),
}

# Short names that users and scripts rely on (`data=...`, `subset_per_class=...`).
ALIASES = {
    "data": "data.source",
    "subset_per_class": "data.subset_per_class",
    "init": "finetune.init",
}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f.name)
        if sub is not None:
            keys += all_keys(sub, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _dataclass_type(cls: type, name: str) -> type | None:
    tp = typing.get_type_hints(cls)[name]
    return tp if dataclasses.is_dataclass(tp) else None


def _unknown_key(key: str) -> ConfigError:
    valid = all_keys() + list(ALIASES)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid)}")


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key (`aug.local_size`, or an alias such as `data`) with type checking."""
    if not isinstance(value, dict):  # `data: {source: ...}` in YAML is the section itself
        key = ALIASES.get(key, key)
    obj: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or part not in {
            f.name for f in dataclasses.fields(obj)
        }:
            raise _unknown_key(key)
        obj = getattr(obj, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key(key)
    tp = typing.get_type_hints(type(obj))[name]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key '{key}' is a section; set its fields, e.g. {key}.<field>=..."
            )
        for k, v in value.items():
            set_key(cfg, f"{key}.{k}", v)
        return
    value = coerce(key, value, tp)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"config key '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}"
        )
    setattr(obj, name, value)


def parse_overrides(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"expected key=value, got {arg!r} (e.g. epochs=10 data=path/to/images)"
            )
        out[key.strip()] = value
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


def build_config(
    recipe: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    cfg = Config()
    if recipe is not None:
        for k, v in load_yaml(recipe).items():
            set_key(cfg, k, v)
    for k, v in (overrides or {}).items():
        set_key(cfg, k, v)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    checks = [
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("aug.global_crops", cfg.aug.global_crops >= 1, "at least 1"),
        ("aug.local_crops", cfg.aug.local_crops >= 0, "0 or more"),
        ("idmm.label_smoothing", 0 <= cfg.idmm.label_smoothing < 1, "in [0, 1)"),
        ("idmm.cutmix_p", 0 <= cfg.idmm.cutmix_p <= 1, "in [0, 1]"),
        ("warmup_epochs", cfg.warmup_epochs >= 0, "0 or more"),
        ("drop_path", 0 <= cfg.drop_path < 1, "in [0, 1)"),
        ("threads", cfg.threads is None or cfg.threads >= 1, "at least 1 (or none)"),
        ("knn_every", cfg.knn_every >= 0, "0 (off) or more"),
        ("snapshot_every", cfg.snapshot_every >= 0, "0 (off) or more"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, "at least 1"),
        ("lr", cfg.lr is None or cfg.lr > 0, "positive (or none for base_lr x batch / 256)"),
        ("img_size", cfg.img_size is None or cfg.img_size >= 4, "at least 4 (or none)"),
        ("idmm.imprint_temperature", cfg.idmm.imprint_temperature > 0, "positive"),
        ("contrastive.temperature", cfg.contrastive.temperature > 0, "positive"),
        ("dino.student_temp", cfg.dino.student_temp > 0, "positive"),
        ("dino.teacher_temp", cfg.dino.teacher_temp > 0, "positive"),
        ("dino.warmup_teacher_temp", cfg.dino.warmup_teacher_temp > 0, "positive"),
        ("dino.momentum_teacher", 0 <= cfg.dino.momentum_teacher <= 1, "in [0, 1]"),
        ("dino.center_momentum", 0 <= cfg.dino.center_momentum <= 1, "in [0, 1]"),
        ("finetune.epochs", cfg.finetune.epochs >= 1, "at least 1"),
        ("finetune.batch_size", cfg.finetune.batch_size >= 1, "at least 1"),
        ("finetune.label_smoothing", 0 <= cfg.finetune.label_smoothing < 1, "in [0, 1)"),
        ("finetune.mixup_alpha", cfg.finetune.mixup_alpha >= 0, "0 (off) or more"),
        ("finetune.cutmix_alpha", cfg.finetune.cutmix_alpha >= 0, "0 (off) or more"),
        ("finetune.randaug_ops", cfg.finetune.randaug_ops >= 0, "0 (off) or more"),
        (
            "finetune.randaug_magnitude",
            0 <= cfg.finetune.randaug_magnitude[0] <= cfg.finetune.randaug_magnitude[1] <= 10,
            "(lo, hi) with 0 <= lo <= hi <= 10",
        ),
        ("finetune.randaug_p", 0 <= cfg.finetune.randaug_p <= 1, "in [0, 1]"),
        ("finetune.eval_crop", 0 < cfg.finetune.eval_crop <= 1, "in (0, 1]"),
        ("finetune.eval_every", cfg.finetune.eval_every >= 1, "at least 1"),
        ("finetune.drop_path", 0 <= cfg.finetune.drop_path < 1, "in [0, 1)"),
        ("finetune.stage2_epochs", cfg.finetune.stage2_epochs >= 0, "0 (off) or more"),
        ("linear.epochs", cfg.linear.epochs >= 1, "at least 1"),
        ("linear.lrs", len(cfg.linear.lrs) >= 1 and min(cfg.linear.lrs) > 0, "positive lrs"),
        ("linear.val_fraction", 0 < cfg.linear.val_fraction < 1, "in (0, 1)"),
    ]
    from .methods import get_method  # here: the methods import this module

    get_method(cfg.method)  # an unknown name fails now, naming the valid ones
    for key, ok, need in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {need}")
    for key in ("aug.global_scale", "aug.local_scale", "finetune.crop_scale"):
        section, name = key.split(".")
        lo, hi = getattr(getattr(cfg, section), name)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"config key '{key}' must be (lo, hi) with 0 < lo <= hi <= 1")


def to_dict(cfg: Config) -> dict:
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def from_dict(d: dict) -> Config:
    cfg = Config()
    for k, v in d.items():
        set_key(cfg, k, v)
    return cfg


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
