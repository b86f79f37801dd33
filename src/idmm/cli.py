"""Command line: subcommands -> config -> the Python API, nothing else.

idmm pretrain data=fashion-mnist subset_per_class=204 out=runs/fm epochs=50
idmm eval knn checkpoint=runs/fm
torchrun --nproc_per_node=2 -m idmm pretrain ...
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, api
from .config import Config, ConfigError, all_keys, parse_overrides, to_dict
from .data.sources import DataError
from .engine.checkpoint import CheckpointError
from .engine.trainer import TrainingError

EPILOG = """\
settings are key=value pairs (nested keys with dots), applied after --config:
  data=PATH|fashion-mnist|flowers102|...   the training images (a folder, a CSV, a dataset name)
  data.root=DIR        where a named dataset lives;   subset_per_class=204  class-balanced subset
  out=runs/NAME        the run directory;             resume=true  continue it exactly
  model=auto|vit_cpu_small|vit_cpu|deit_tiny_patch16_224|<any timm model>    img_size=112
  epochs=100 batch_size=256 lr=... (default base_lr*batch/256) seed=0 precision=auto|fp32|bf16
  aug.local_size=16    idmm.label_smoothing=0.1    idmm.cutmix_alpha=0.5    knn_every=5
  idmm.head_init=random|imprint   (imprint: what makes short CPU runs learn)
recipes: --config configs/cpu/fmnist2040.yaml (CPU, ~6 min), configs/paper/*.yaml (the paper's)
run `idmm keys` for every key and its default.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="idmm",
        description="Train Vision Transformers from scratch on small datasets (IDMM).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"idmm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training (IDMM by default)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    pre.add_argument("--config", help="a YAML recipe (e.g. configs/cpu/fmnist.yaml)")
    pre.add_argument("settings", nargs="*", metavar="key=value")
    ev = sub.add_parser("eval", help="evaluate a pre-trained backbone")
    ev.add_argument("protocol", choices=["knn"], help="knn: weighted cosine kNN (T=0.07)")
    ev.add_argument(
        "settings",
        nargs="*",
        metavar="key=value",
        help="checkpoint=RUN_DIR (required), optionally data=... and other keys",
    )
    sub.add_parser("keys", help="list every config key")
    return p


def _defaults() -> list[str]:
    """`key=default` for every config key."""
    defaults, lines = to_dict(Config()), []
    for key in all_keys():
        value = defaults
        for part in key.split("."):
            value = value[part]
        lines.append(f"{key}={value}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            print("\n".join(_defaults()))
        elif args.command == "pretrain":
            settings = parse_overrides(args.settings)
            results = api.pretrain(args.config, **settings)
            if results:
                print(f"pre-training finished: {settings.get('out', 'runs/idmm')}")
        elif args.command == "eval":
            settings = parse_overrides(args.settings)
            if "checkpoint" not in settings:
                raise ConfigError("idmm eval needs checkpoint=RUN_DIR (a pre-training run dir)")
            result = api.evaluate_knn(settings.pop("checkpoint"), **settings)
            print(f"kNN top-1 (k={result['k']}): {result['top1'] * 100:.2f}%")
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"idmm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("idmm: interrupted; continue with resume=true", file=sys.stderr)
        return 130
    return 0
