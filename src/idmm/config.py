"""Typed configuration: the schema per stage (idmm.config_schema, re-exported here), built
from recipes and `key=value` settings, and checked.

A config is built from defaults, then an optional YAML recipe, then `key=value` overrides (CLI) or
keyword arguments (Python API), in that order. Unknown keys and values of the wrong type raise a
ConfigError naming the key, so a typo never silently trains the wrong thing. "auto" values are
resolved before a stage starts, and what a run directory's config.yaml records is what ran.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from .config_schema import (  # noqa: F401  (the schema is part of this module's API)
    AugConfig,
    CommonConfig,
    Config,
    DataConfig,
    FinetuneConfig,
    FinetuneSettings,
    LinearConfig,
    PretrainConfig,
    RunConfig,
    finetune_config,
    pretrain_config,
    run_config,
    schema_of,
)
from .config_types import ConfigError, coerce
from .methods import check_name

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


def key_notes(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """Each key's comment in the schema's source (`field: type = default  # comment`)."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # built-ins, and the classes made by make_dataclass
            continue
        for m in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            notes[prefix + m.group(1)] = m.group(2).strip()
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f.name)
        if sub is not None:
            notes.update(key_notes(sub, f"{prefix}{f.name}."))
    return notes


def key_types(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """Each key's type as a user reads it: int, float, str, bool, a list, `| auto`..."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(key_types(tp, f"{prefix}{f.name}."))
            continue
        text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
        out[f"{prefix}{f.name}"] = text.replace(" | None", " | auto").replace("NoneType", "auto")
    return out


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
        data = load_yaml(recipe_path(recipe))
        if schema is RunConfig and schema_of(data) is FinetuneConfig:
            data = _as_recipe(data)
        for k, v in data.items():
            set_key(cfg, k, v)
    written_for = copy.deepcopy(cfg.data)
    for k, v in (overrides or {}).items():
        set_key(cfg, k, v)
    if recipe is not None and cfg.data.source != written_for.source:
        _leave_recipe_data(cfg, written_for, recipe, overrides or {})
    validate(cfg)
    return cfg


def _as_recipe(flat: dict) -> dict:
    """A fine-tuning run's config.yaml (its fine-tuning keys at the top level) as a recipe, so
    that `--config runs/ft/config.yaml` repeats the run: those keys go under `finetune:`."""
    tuning = {f.name for f in dataclasses.fields(FinetuneSettings)}
    recipe = {k: v for k, v in flat.items() if k not in tuning}
    recipe["finetune"] = {k: v for k, v in flat.items() if k in tuning}
    return recipe


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

    need("epochs", lambda v: v is None or v >= 1, "at least 1 (or auto)")
    need("batch_size", lambda v: v is None or v >= 1, "at least 1 (or auto)")
    need("warmup_epochs", lambda v: v >= 0, "0 or more")
    need("drop_path", lambda v: 0 <= v < 1, "in [0, 1)")
    need("layer_decay", lambda v: 0 < v <= 1, "in (0, 1], e.g. 0.75 (1 = off)")
    need("ema", lambda v: v == 0 or 0.5 <= v < 1, "0 (off) or a decay in [0.5, 1), e.g. 0.999")
    need("threads", lambda v: v is None or v >= 1, "at least 1 (or none)")
    need("knn_every", lambda v: v >= 0, "0 (off) or more")
    need("snapshot_every", lambda v: v >= 0, "0 (off) or more")
    need("eval_batch_size", lambda v: v >= 1, "at least 1")
    need("lr", lambda v: v is None or v > 0, "positive (or none for base_lr x batch / 256)")
    need("img_size", lambda v: v is None or v >= 4, "at least 4 (or none)")
    need("eval_every", lambda v: v >= 1, "at least 1")
    need("stage2_epochs", lambda v: v >= 0, "0 (off) or more")
    need("budget", lambda v: v is None or _is_duration(v), "a duration such as 90s, 20m, 2h")
    if "budget" in has and "aug" in has and obj.aug.progressive_from is not None:
        # its epochs get dearer as the crops grow, which the budget's plan (one pace an epoch
        # for the rest of the stage) does not model: it would plan too many
        why = "unset with aug.progressive_from (progressive resolution trains to epochs=)"
        checks.append(("budget", obj.budget is None, why))
    return checks


def _is_duration(text: str) -> bool:
    from .engine.budget import parse_duration

    try:
        parse_duration(text)
    except ConfigError:
        return False
    return True


def validate(cfg: Any, obj: Any = None, prefix: str = "") -> None:
    """Every value in range, recursively; the error names the full key."""
    obj = cfg if obj is None else obj
    if obj is cfg and hasattr(cfg, "method"):
        check_name(cfg.method)  # an unknown name fails now, naming the valid ones
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
