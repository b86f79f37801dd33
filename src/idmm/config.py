"""Typed configuration, one schema per stage: nested dataclasses are the schema.

- `PretrainConfig`: a pre-training run (`idmm pretrain`); each method's settings are a section
  named by the method (`idmm.*`, `contrastive.*`, `dino.*`, `supervised.*`), taken from the
  method registry, so a new method brings its settings without touching this file.
- `FinetuneConfig`: a fine-tuning run (`idmm finetune`, and the stages of `idmm run`): the
  fine-tuning keys at its top level.
- `RunConfig` (also `Config`): `idmm run` and recipes: pre-training keys at the top, fine-tuning
  in `finetune.*`. `pretrain_config` and `finetune_config` cut a stage's config out of it.

A config is built from defaults, then an optional YAML recipe, then `key=value` overrides (CLI) or
keyword arguments (Python API), in that order. Unknown keys and values of the wrong type raise a
ConfigError naming the key, so a typo never silently trains the wrong thing. "auto" values are
resolved before a stage starts, and what a run directory's config.yaml records is what ran.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_types import ConfigError, coerce
from .eval.linear import DEFAULT_LRS
from .methods import get_method, method_settings
from .methods.supervised import SupervisedConfig


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # a folder, a CSV of path,label, or a dataset name
    root: str | None = None  # where a named dataset lives on disk
    subset_per_class: int | None = None  # class-balanced subset (204 on FMNIST = FMNIST-2040)
    subset_seed: int = 0
    # Splits, decided once per run directory (splits.json) and read back by every later stage:
    # validation = data.val (a folder or CSV) or a seeded stratified hold-out of the training
    # images; test = the dataset's own test split, data.test, or a hold-out of the training images.
    val: str | None = None
    test: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # only when the dataset has no test split and data.test is unset
    split_seed: int = 0
    skip_bad: bool = False  # skip unreadable images with a warning instead of failing
    cache_size: int | None = None  # decode resolution; None = the training image size
    # A decoded set larger than this many GiB goes to a memory-mapped file in cache_dir
    # (default ~/.cache/idmm or $IDMM_CACHE), built once and reused while the source is unchanged.
    memmap_gb: float = 4.0
    cache_dir: str | None = None
    # Normalisation; None = the per-channel mean/std of the cached training images (recorded
    # in the resolved config so evaluation and fine-tuning use the same numbers).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
            ("test_fraction", self.val_fraction + self.test_fraction < 1,
             "below 1 - data.val_fraction"),
        ]  # fmt: skip


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

    def problems(self) -> list[tuple[str, bool, str]]:
        scale = "(lo, hi) with 0 < lo <= hi <= 1"
        return [
            ("global_crops", self.global_crops >= 1, "at least 1"),
            ("local_crops", self.local_crops >= 0, "0 or more"),
            ("global_scale", 0 < self.global_scale[0] <= self.global_scale[1] <= 1, scale),
            ("local_scale", 0 < self.local_scale[0] <= self.local_scale[1] <= 1, scale),
        ]


@dataclass
class LinearConfig:
    """Linear probe on frozen features: every lr of the grid trains in one pass."""

    lrs: tuple[float, ...] = DEFAULT_LRS  # SGD on standardised features
    epochs: int = 100
    val_fraction: float = 0.2  # without a validation split: held out of train to choose the lr

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("lrs", len(self.lrs) >= 1 and min(self.lrs) > 0, "positive lrs"),
            ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
        ]


@dataclass
class CommonConfig:
    """What every stage has: data, where it runs and writes, and how."""

    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/idmm"
    model: str = "auto"  # any timm model name or a preset from idmm.models.PRESETS
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    compile: bool = False  # torch.compile the training forward (GPU speed; ~30 s per new shape)
    resume: bool = False  # continue out/checkpoints/last.ckpt exactly
    # A NaN/inf loss stops training (the last good checkpoint is kept); true skips the step
    # instead and counts it (metrics.jsonl, results.json: skipped_steps).
    skip_nonfinite: bool = False
    overwrite: bool = False  # start afresh in an out= that already holds a run
    eval_batch_size: int = 512
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log
    # Recorded, not set: batch_size x processes (under torchrun), which `lr` was scaled by.
    global_batch_size: int | None = None
    linear: LinearConfig = field(default_factory=LinearConfig)


@dataclass
class _Pretrain(CommonConfig):
    method: str = "idmm"
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
    knn_every: int = 0  # online kNN monitor (on the validation split) every N epochs; 0 = off
    snapshot_every: int = 0  # snapshots/epoch_N.safetensors every N epochs
    knn_k: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    aug: AugConfig = field(default_factory=AugConfig)


def _with_method_sections(base: type, name: str) -> type:
    """`base` plus one section per registered method's settings (`idmm`, `dino`, ...)."""
    sections = [(key, cls, field(default_factory=cls)) for key, cls in method_settings().items()]
    cls = dataclasses.make_dataclass(name, sections, bases=(base,))
    cls.__module__ = __name__
    return cls


PretrainConfig = _with_method_sections(_Pretrain, "PretrainConfig")


@dataclass
class FinetuneSettings(SupervisedConfig):
    """Supervised fine-tuning (DeiT recipe, as the paper), also the from-scratch baseline: the
    `finetune.*` section of a recipe, and the top level of a fine-tuning run's config."""

    init: str | None = None  # a run directory or a .safetensors file; None = from scratch
    epochs: int = 100
    img_size: int | None = None  # None = the pre-training img_size (the paper: 112 -> 224)
    batch_size: int = 256
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-3
    warmup_epochs: float = 2.0
    clip_grad: float | None = None
    drop_path: float = 0.1
    # "random" (the paper) or "probe": with init=, the new head starts as a linear probe of the
    # pre-trained features (LP-FT), so its first gradients do not scramble them
    head_init: str = "random"
    eval_every: int = 1  # validation accuracy every N epochs (and always after the last)
    # An optional second stage at a higher resolution (the paper's 224 -> 448), starting from
    # the first stage's model; 0 epochs = no second stage.
    stage2_img_size: int | None = None
    stage2_epochs: int = 0
    stage2_batch_size: int | None = None  # None = batch_size (the paper: 128)
    stage2_base_lr: float = 1e-4  # the paper: lr 5e-5 at batch 128


@dataclass
class FinetuneConfig(FinetuneSettings, CommonConfig):
    """A fine-tuning run: the common keys and the fine-tuning keys, all at the top level."""


@dataclass
class RunConfig(PretrainConfig):  # type: ignore[misc, valid-type]
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    # `idmm run` only: also train the classifier from scratch for as many epochs as
    # pre-training + fine-tuning, the supervised baseline the report compares against.
    baseline: bool = False


Config = RunConfig  # the recipe schema; `idmm.Config`

CHOICES = {
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "progress": ("auto", "bar", "log"),
    "head_init": ("random", "probe"),
    "finetune.head_init": ("random", "probe"),
    "idmm.head_init": ("random", "imprint"),
}

# Short names that users and scripts rely on (`data=...`, `subset_per_class=...`).
ALIASES = {"data": "data.source", "subset_per_class": "data.subset_per_class"}
RUN_ALIASES = {**ALIASES, "init": "finetune.init"}


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
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


def _aliases(cfg: Any) -> dict[str, str]:
    return RUN_ALIASES if isinstance(cfg, RunConfig) else ALIASES


def _unknown_key(cfg: Any, key: str) -> ConfigError:
    valid = all_keys(type(cfg)) + list(_aliases(cfg))
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Run `idmm keys` to list the keys.")


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set a dotted key (`aug.local_size`, or an alias such as `data`) with type checking."""
    if not isinstance(value, dict):  # `data: {source: ...}` in YAML is the section itself
        key = _aliases(cfg).get(key, key)
    obj: Any = cfg
    parts = key.split(".")
    for part in parts:
        if not dataclasses.is_dataclass(obj) or part not in {
            f.name for f in dataclasses.fields(obj)
        }:
            raise _unknown_key(cfg, key)
        if part != parts[-1]:
            obj = getattr(obj, part)
    name = parts[-1]
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


RECIPES = Path(__file__).parent / "recipes"  # configs/ in a checkout is a link to it


def recipes() -> dict[str, Path]:
    """The recipes shipped inside the package, by name (`cpu/fmnist2040`)."""
    return {p.relative_to(RECIPES).with_suffix("").as_posix(): p
            for p in sorted(RECIPES.glob("*/*.yaml"))}  # fmt: skip


def recipe_path(spec: str | Path) -> Path:
    """A YAML file, or a recipe of the package by name (`cpu/fmnist2040`, `paper/...`)."""
    p = Path(spec)
    if p.is_file():
        return p
    name = p.as_posix().removesuffix(".yaml").removeprefix("configs/")
    if name in recipes():
        return recipes()[name]
    raise ConfigError(
        f"config file not found: {p}; give a YAML file or a recipe name: "
        f"{', '.join(recipes())} (`idmm recipes` lists them)"
    )


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


# Keys that describe a recipe's own dataset, not how to train: they do not follow the recipe
# onto another dataset (`--config cpu/fmnist2040 data=my/photos` must not keep FMNIST's subset).
DATASET_KEYS = ("root", "subset_per_class", "subset_seed", "mean", "std")


def build_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 schema: type = RunConfig) -> Any:  # fmt: skip
    cfg = schema()
    if recipe is not None:
        for k, v in load_yaml(recipe_path(recipe)).items():
            set_key(cfg, k, v)
    written_for = copy.deepcopy(cfg.data)
    for k, v in (overrides or {}).items():
        set_key(cfg, k, v)
    if recipe is not None and cfg.data.source != written_for.source:
        _leave_recipe_data(cfg, written_for, recipe, overrides or {})
    validate(cfg)
    return cfg


def _leave_recipe_data(cfg: Any, written_for: Any, recipe: Any, overrides: dict) -> None:
    """The recipe's dataset keys back to their defaults on another dataset, unless given again;
    says which were left and that the training settings are kept."""
    given = {_aliases(cfg).get(k, k) for k in overrides}
    default, left = DataConfig(), []
    for key in DATASET_KEYS:
        value = getattr(written_for, key)
        if value != getattr(default, key) and f"data.{key}" not in given:
            setattr(cfg.data, key, getattr(default, key))
            left.append(f"data.{key}={value}")
    if left:
        logging.getLogger("idmm").warning(
            f"--config {recipe} is written for data={written_for.source}; on data="
            f"{cfg.data.source} its dataset keys {', '.join(left)} are not applied (give them to "
            "keep them); its training settings (model, sizes, epochs, augmentation) are kept"
        )


def _problems(obj: Any) -> list[tuple[str, bool, str]]:
    """(key, ok, what it must be) for the top-level fields of a config object."""
    if not isinstance(obj, (CommonConfig, FinetuneSettings)):
        return obj.problems() if hasattr(obj, "problems") else []  # a section checks itself
    checks = obj.problems() if hasattr(obj, "problems") else []
    has = {f.name for f in dataclasses.fields(obj)}

    def need(key, ok, what):
        if key in has:
            checks.append((key, ok(getattr(obj, key)), what))

    need("epochs", lambda v: v >= 1, "at least 1")
    need("batch_size", lambda v: v >= 1, "at least 1")
    need("warmup_epochs", lambda v: v >= 0, "0 or more")
    need("drop_path", lambda v: 0 <= v < 1, "in [0, 1)")
    need("threads", lambda v: v is None or v >= 1, "at least 1 (or none)")
    need("knn_every", lambda v: v >= 0, "0 (off) or more")
    need("snapshot_every", lambda v: v >= 0, "0 (off) or more")
    need("eval_batch_size", lambda v: v >= 1, "at least 1")
    need("lr", lambda v: v is None or v > 0, "positive (or none for base_lr x batch / 256)")
    need("img_size", lambda v: v is None or v >= 4, "at least 4 (or none)")
    need("eval_every", lambda v: v >= 1, "at least 1")
    need("stage2_epochs", lambda v: v >= 0, "0 (off) or more")
    return checks


def validate(cfg: Any, obj: Any = None, prefix: str = "") -> None:
    """Every value in range, recursively; the error names the full key."""
    obj = cfg if obj is None else obj
    if obj is cfg and hasattr(cfg, "method"):
        get_method(cfg.method)  # an unknown name fails now, naming the valid ones
    for key, ok, need in _problems(obj):
        if not ok:
            raise ConfigError(f"config key '{prefix}{key}' must be {need}")
    for f in dataclasses.fields(obj):
        sub = getattr(obj, f.name)
        if dataclasses.is_dataclass(sub):
            validate(cfg, sub, f"{prefix}{f.name}.")


def to_dict(cfg: Any) -> dict:
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def from_dict(d: dict, schema: type = RunConfig) -> Any:
    cfg = schema()
    for k, v in d.items():
        set_key(cfg, k, v)
    return cfg


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _fill(target: Any, fields_of: type, source: Any) -> Any:
    for f in dataclasses.fields(fields_of):
        setattr(target, f.name, copy.deepcopy(getattr(source, f.name)))
    return target


def pretrain_config(run: RunConfig) -> Any:
    """The pre-training stage of a recipe: its top-level keys, without `finetune.*`."""
    return _fill(PretrainConfig(), PretrainConfig, run)


def finetune_config(run: RunConfig) -> FinetuneConfig:
    """The fine-tuning stage of a recipe: the common keys and `finetune.*` at the top level."""
    return _fill(_fill(FinetuneConfig(), CommonConfig, run), FinetuneSettings, run.finetune)


def run_config(pre: Any, ft: FinetuneConfig, baseline: bool = False) -> RunConfig:
    """A recipe from its two stages (what `idmm run` records): the inverse of the two cuts."""
    run = _fill(RunConfig(), PretrainConfig, pre)
    _fill(run.finetune, FinetuneSettings, ft)
    run.baseline = baseline
    return run


def schema_of(d: dict) -> type:
    """Which config a run directory's config.yaml holds, from its keys."""
    if "finetune" in d:
        return RunConfig
    return FinetuneConfig if "init" in d else PretrainConfig
