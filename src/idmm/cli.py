"""Command line: a table of verbs, each parsing its settings and calling idmm.commands.<verb>.

idmm run data=fashion-mnist subset_per_class=204 out=runs/fm baseline=true
idmm pretrain data=fashion-mnist subset_per_class=204 out=runs/fm epochs=50
idmm finetune data=fashion-mnist subset_per_class=204 init=runs/fm out=runs/fm-ft epochs=50
idmm eval knn|linear checkpoint=runs/fm
idmm export run=runs/fm-ft [format=onnx];  idmm predict checkpoint=runs/fm-ft shirt.png photos/
idmm embed checkpoint=runs/fm photos/ out=embeddings.npz
idmm compare data=fmnist-2040 methods=idmm,simclr,supcon,dino,scratch out=runs/compare
idmm transfer sources=fmnist-2040,sklearn-digits targets=fmnist-2040,sklearn-digits out=runs/tr
idmm analyze runs/compare/idmm runs/compare/simclr runs/compare/scratch
idmm sweep data=fmnist-2040 models=vit_cpu_small,vit_cpu_small_conv,resnet_cpu_small out=runs/sweep
idmm report runs/compare/idmm runs/compare/scratch runs/compare/analysis out=report.html
torchrun --nproc_per_node=2 -m idmm pretrain ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from . import __version__
from .config_types import ConfigError

# Each verb imports what it runs when it runs (torch and timm take seconds to import): `idmm
# --help` and a mistyped verb answer at once.

EPILOG = """\
settings are key=value pairs (nested keys with dots), applied after --config:
  data=PATH|fmnist-2040|sklearn-digits|clipart|flowers102|...   images (folder, CSV, name)
  method=idmm|simclr|supcon|dino|supervised   the pre-training method (default idmm)
  data.root=DIR        where a named dataset lives;   subset_per_class=204  class-balanced subset
  out=runs/NAME        the run directory;             resume=true  continue it exactly
  model=auto|vit_cpu_small_conv|vit_cpu_small|deit_tiny_patch16_224|<timm model>  img_size=112
  epochs=auto batch_size=auto lr=... (default base_lr*batch/256) seed=0 precision=auto|fp32|bf16
  aug.local_size=16    idmm.label_smoothing=0.1    idmm.cutmix_alpha=0.5    knn_every=5
  idmm.head_init=random|imprint   (imprint: what makes short CPU runs learn)
  init=RUN_DIR         fine-tune from a pre-training run (idmm finetune: every finetune.* key also
                       works without its prefix: epochs=, lr=, img_size=, head_init= ...)
  data.val=DIR data.test=DIR  validation / test sets; else held out of the training images
                       (data.val_fraction=0.1, data.test_fraction=0.2, data.split_seed=0)
  baseline=true        idmm run: also train from scratch for the same total epochs
  budget=20m           the whole command within 20 minutes: every stage's epochs scaled alike,
                       after the first epoch (90s, 20m, 2h, 1h30m)
recipes: --config cpu/fmnist2040 (CPU, ~7 min), paper/flowers102_deit_tiny ... (`idmm recipes`);
  a path to a YAML file works too
run `idmm keys` for every key and its default.
"""


# The settings a verb takes besides the config keys (the first lines of its --help epilog).
VERB_KEYS = {
    "compare": """\
idmm compare takes, besides the config keys:
  methods=idmm,idmm-paper,simclr,supcon,dino,scratch   entries: methods, scratch, and the named
                       variants idmm-paper (the paper's IDMM at this recipe's size), cnn,
                       ablate-plain, ablate+ls, ablate+smallres, ablate+multicrop, ablate+cutmix,
                       and the levers idmm-cosine, idmm-proj, idmm-headlr, idmm-nomix,
                       idmm-local0.5, idmm-nolocal, idmm-localfull, simclr-2crops
  budget=10m           each entry within 10 minutes (its epochs set from its pace)
  seeds=3              repeats: seed, subset draw and splits change per seed
  draws=per_seed|fixed fixed: every seed on the same subset and splits
  reference=idmm       the entry every other's difference is paired against
""",
    "ablate": """\
idmm ablate takes, besides the config keys:
  seeds=3              repeats (as idmm compare); out/ablation.md has the paper's numbers beside
""",
    "transfer": """\
idmm transfer takes, besides the config keys:
  sources=A,B          datasets to pre-train on (names, folders or CSVs)
  targets=C,D          datasets to fine-tune each pre-training on
  seeds=3              repeats (as idmm compare); each cell paired with the target's own
                       pre-training (draws=fixed keeps one draw of the data)
""",
    "sweep": """\
idmm sweep takes, besides the config keys:
  models=vit_cpu_small,vit_cpu_small_conv,resnet_cpu_small   backbones; MODEL@PIXELS for a size
""",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="idmm",
        description="Train Vision Transformers from scratch on small datasets (IDMM).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"idmm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("pretrain", "pre-training (IDMM by default; method=simclr|supcon|dino|supervised)"),
        ("finetune", "supervised fine-tuning from init=RUN_DIR; without init, from scratch"),
        ("run", "pre-train, evaluate (kNN, linear), fine-tune, write report.md"),
        (
            "compare",
            "methods=idmm,idmm-paper,simclr,...,scratch seeds=K: each pre-trained, "
            "evaluated, fine-tuned; mean, 95%% interval, paired difference to reference=",
        ),
        (
            "ablate",
            "the paper's ablation (Table 8) on this data: instance discrimination, + label "
            "smoothing, + small resolution, + multi-crop, + CutMix; seeds=K",
        ),
        ("transfer", "sources=A,B targets=C,D: pre-train on each source, fine-tune on each target"),
        ("sweep", "models=a,b,c: the same recipe per model; accuracy vs params, FLOPs, latency"),
    ):
        cmd = sub.add_parser(name, help=text, description=text.replace("%%", "%") + ".",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=VERB_KEYS.get(name, "") + EPILOG)  # fmt: skip
        cmd.add_argument(
            "--config",
            help="a YAML recipe: a file, or a recipe name such as "
            "cpu/fmnist2040 (`idmm recipes` lists them)",
        )
        cmd.add_argument("settings", nargs="*", metavar="key=value")
    ev = sub.add_parser("eval", help="evaluate a pre-trained backbone on frozen features")
    ev.add_argument(
        "protocol",
        choices=["knn", "linear"],
        help="knn: weighted cosine kNN (T=0.07); linear: linear probe, lr chosen on held-out data",
    )
    ev.add_argument(
        "settings",
        nargs="*",
        metavar="key=value",
        help="checkpoint=RUN_DIR (required), optionally data=... and other keys",
    )
    ex = sub.add_parser("export", help="write model.safetensors + model.json for timm "
                        "(format=onnx: also model.onnx, checked with onnxruntime)")  # fmt: skip
    ex.add_argument(
        "settings",
        nargs="*",
        metavar="key=value",
        help="run=RUN_DIR [out=DIR] [format=safetensors|onnx]",
    )
    pr = sub.add_parser("predict", help="top-k classes of images with a fine-tuned model")
    pr.add_argument("settings", nargs="+", metavar="checkpoint=RUN_DIR IMAGE_OR_FOLDER")
    pr.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    em = sub.add_parser("embed", help="features of images (files, folders) to a .npz or .csv "
                        "file, with their paths")  # fmt: skip
    em.add_argument(
        "settings", nargs="+", metavar="checkpoint=RUN_DIR IMAGE_OR_FOLDER ... [out=embeddings.npz]"
    )
    an = sub.add_parser("analyze", help="t-SNE, alignment/uniformity, instance-head analyses")
    an.add_argument("settings", nargs="+", metavar="RUN_DIR ... [out=DIR points=2000 "
                    "coverage_steps=30]")  # fmt: skip
    rp = sub.add_parser("report", help="one self-contained HTML page comparing runs")
    rp.add_argument("settings", nargs="+", metavar="RUN_DIR ... [out=report.html]")
    ks = sub.add_parser("keys", help="every config key: default, type and what it does "
                        "(idmm keys aug: only the aug.* keys)")  # fmt: skip
    ks.add_argument("prefix", nargs="?", default="", help="only the keys starting with this")
    sub.add_parser("recipes", help="list the recipes inside the package (--config NAME)")
    return p


def _defaults(prefix: str = "") -> list[str]:
    """`key (type) = default  # what it is` for every config key (or those under `prefix`), a
    section at a time."""
    from .config import RunConfig, all_keys, key_notes, key_types, to_dict

    defaults, lines, notes, section = to_dict(RunConfig()), [], key_notes(), None
    types = key_types()
    keys = [k for k in all_keys() if k.startswith(prefix)]
    if not keys:
        raise ConfigError(f"no config key starts with '{prefix}'; `idmm keys` lists them all")
    for key in keys:
        value = defaults
        for part in key.split("."):
            value = value[part]
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"\n[{head}]" if head else "[top level: pre-training and common keys]")
        text = f"{key}={value}"
        typed = f"{text:<36} {'(' + types[key] + ')':<22}"
        lines.append(f"{typed} # {notes[key]}" if notes.get(key) else typed.rstrip())
    return lines


def _recipes() -> list[str]:
    """Each packaged recipe by name, with the first line of its header comment."""
    from .config import recipes

    lines = []
    for name, path in recipes().items():
        first = next((x for x in path.read_text().splitlines() if x.startswith("#")), "#")
        lines.append(f"{name:<34} {first.lstrip('# ').strip()}")
    return lines


def _count(kv: dict, key: str, default: int, least: int) -> int:
    """An integer setting of a command that is not a config key, checked like one."""
    value = kv.get(key, str(default))
    if not value.strip().isdigit() or int(value) < least:
        raise ConfigError(f"{key}={value}: give a whole number of at least {least}")
    return int(value)


def _split(settings: list[str], required: str, usage: str) -> tuple[str, dict]:
    from .config import parse_overrides

    kv = parse_overrides(settings)
    if required not in kv:
        raise ConfigError(f"missing {required}=...; usage: {usage}")
    return kv.pop(required), kv


def _predict(args) -> None:
    from .commands.export import predict

    pairs = [s for s in args.settings if "=" in s]
    images = [s for s in args.settings if "=" not in s]
    checkpoint, rest = _split(pairs, "checkpoint", "idmm predict checkpoint=RUN IMAGES...")
    if rest:
        raise ConfigError(f"idmm predict takes only checkpoint=...; got {', '.join(rest)}")
    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: give how many classes to show, at least 1")
    rows = predict(checkpoint, images, top_k=args.top_k)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["path"]) for r in rows)
    for r in rows:
        preds = "  ".join(f"{p['class']} {p['prob'] * 100:.1f}%" for p in r["predictions"])
        preds = preds or f"error: {r['error']}"
        print(f"{r['path']:<{width}}  {preds}")


def _embed(args) -> None:
    from .commands.embed import embed

    pairs = [s for s in args.settings if "=" in s]
    images = [s for s in args.settings if "=" not in s]
    usage = "idmm embed checkpoint=RUN IMAGES... [out=embeddings.npz]"
    checkpoint, kv = _split(pairs, "checkpoint", usage)
    out = kv.pop("out", "embeddings.npz")
    if kv:
        raise ConfigError(f"idmm embed takes checkpoint= and out=; got {', '.join(kv)}")
    r = embed(checkpoint, images, out)
    for path, reason in r["errors"].items():
        print(f"skipped {path}: {reason}")
    print(f"{r['images']} embeddings of dimension {r['dim']} written to {r['out']}")


def _analyze(args) -> None:
    from .commands.analyze import analyze
    from .config import parse_overrides

    runs = [s for s in args.settings if "=" not in s]
    kv = parse_overrides([s for s in args.settings if "=" in s])
    unknown = set(kv) - {"out", "points", "coverage_steps"}
    if unknown:
        raise ConfigError(f"idmm analyze: unknown {', '.join(sorted(unknown))}; "
                          "it takes out=, points=, coverage_steps=")  # fmt: skip
    results = analyze(runs, kv.get("out"), _count(kv, "points", 2000, 1),
                      _count(kv, "coverage_steps", 30, 0))  # fmt: skip
    for name, r in results.items():
        f = r["final"]
        line = f"{name}: alignment {f['alignment']:.3f} uniformity {f['uniformity']:.3f}"
        if "head" in r:
            h = r["head"]
            line += (f"; head rows: nearest row same class {100 * h['nn_same_class']:.1f}% "
                     f"(chance {100 * h['chance_same_class']:.1f}%)")  # fmt: skip
        print(line)


def _report(args) -> None:
    from .commands.report import report
    from .config import parse_overrides

    kv = parse_overrides([s for s in args.settings if "=" in s])
    if set(kv) - {"out"}:
        raise ConfigError(f"idmm report takes only out=...; got {', '.join(sorted(kv))}")
    runs = [s for s in args.settings if "=" not in s]
    print(f"report written to {report(runs, kv.get('out', 'report.html'))}")


def _pretrain(args) -> None:
    from .commands.pretrain import pretrain
    from .config import parse_overrides

    settings = parse_overrides(args.settings)
    if pretrain(args.config, **settings):
        print(f"pre-training finished: {settings.get('out', 'runs/idmm')}")


def _finetune(args) -> None:
    from .commands.finetune import finetune
    from .config import parse_overrides

    r = finetune(args.config, **parse_overrides(args.settings))
    if r:
        val = f", val {r['val_top1'] * 100:.2f}%" if "val_top1" in r else ""
        top5 = f", top-5 {r['top5'] * 100:.2f}%" if r.get("top5") is not None else ""
        print(f"fine-tuned: test top-1 {r['top1'] * 100:.2f}% (last epoch){top5}{val}")


def _run(args) -> None:
    from .commands.run import run, summary_table
    from .config import parse_overrides

    results = run(args.config, **parse_overrides(args.settings))
    print(summary_table(results))
    print(f"kNN top-1 {results['knn']['top1'] * 100:.2f}%, linear probe top-1 "
          f"{results['linear']['top1'] * 100:.2f}% (frozen backbone, test split)")  # fmt: skip


def _compare(args) -> None:
    from .commands.compare import DEFAULT_METHODS, compare, comparison_table
    from .config import parse_overrides

    kv = parse_overrides(args.settings)
    methods, reference = kv.pop("methods", DEFAULT_METHODS), kv.pop("reference", "idmm")
    rows = compare(args.config, methods, kv.pop("seeds", 1), reference,
                   kv.pop("draws", "per_seed"), **kv)  # fmt: skip
    print(comparison_table(rows, reference))


def _ablate(args) -> None:
    from .commands.ablate import ablate, ablation_table
    from .config import parse_overrides

    kv = parse_overrides(args.settings)
    print(ablation_table(ablate(args.config, kv.pop("seeds", 1), **kv)))


def _sweep(args) -> None:
    from .commands.sweep import DEFAULT_MODELS, sweep, sweep_table
    from .config import parse_overrides

    kv = parse_overrides(args.settings)
    print(sweep_table(sweep(args.config, kv.pop("models", DEFAULT_MODELS), **kv)))


def _transfer(args) -> None:
    from .commands.transfer import transfer, transfer_table
    from .config import parse_overrides

    kv = parse_overrides(args.settings)
    usage = "idmm transfer sources=A,B targets=C,D [key=value ...]"
    sources, kv = _split([f"{k}={v}" for k, v in kv.items()], "sources", usage)
    targets, kv = _split([f"{k}={v}" for k, v in kv.items()], "targets", usage)
    print(transfer_table(transfer(args.config, sources, targets, **kv)))


def _eval(args) -> None:
    from .commands.evaluate import evaluate_knn, evaluate_linear

    checkpoint, kv = _split(args.settings, "checkpoint", "idmm eval knn checkpoint=RUN_DIR")
    evaluate = evaluate_knn if args.protocol == "knn" else evaluate_linear
    r = evaluate(checkpoint, **kv)
    print(f"{args.protocol} top-1: {r['top1'] * 100:.2f}% (test split)")


def _export(args) -> None:
    from .commands.export import export

    usage = "idmm export run=RUN_DIR [out=DIR] [format=safetensors|onnx]"
    run_dir, kv = _split(args.settings, "run", usage)
    out, fmt = kv.pop("out", None), kv.pop("format", "safetensors")
    if kv:
        raise ConfigError(f"idmm export takes run=, out= and format=; got {', '.join(kv)}")
    out_dir = export(run_dir, out, fmt)
    onnx = json.loads((out_dir / "model.json").read_text()).get("onnx")
    if onnx:
        checked = (
            f"outputs match torch's within {onnx['max_abs_diff']:.1e} (onnxruntime)"
            if onnx["checked"]
            else "not checked: onnxruntime is not installed"
        )
        print(f"{out_dir / 'model.onnx'}: {checked}")
    print(f"exported to {out_dir}")


# verb -> what it does; the parser and the dispatch both read this table
VERBS = {
    "pretrain": _pretrain,
    "finetune": _finetune,
    "run": _run,
    "compare": _compare,
    "ablate": _ablate,
    "transfer": _transfer,
    "sweep": _sweep,
    "eval": _eval,
    "export": _export,
    "predict": _predict,
    "embed": _embed,
    "analyze": _analyze,
    "report": _report,
    "keys": lambda args: print("\n".join(_defaults(args.prefix))),
    "recipes": lambda args: print("\n".join(_recipes())),
}


TRAINING = ("pretrain", "finetune", "run", "compare", "ablate", "transfer", "sweep")


def _out_dir(args) -> Path | None:
    """Where a training verb writes (its out=), to clean up or point at after a failure."""
    if args.command not in TRAINING:
        return None
    given = [s.split("=", 1)[1] for s in args.settings if s.startswith("out=")]
    return Path(given[-1] if given else "runs/idmm")


def _after_failure(message: str, out: Path | None, existed: bool) -> None:
    """The error goes to train.log too; a directory this command created and filled with
    nothing worth keeping (no checkpoint) is removed."""
    log = logging.getLogger("idmm")
    record = logging.LogRecord("idmm", logging.ERROR, "", 0, f"error: {message}", None, None)
    files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.emit(record)
    if out is not None and out.is_dir() and not existed and not _checkpoints(out):
        for handler in files:  # train.log goes with the directory
            log.removeHandler(handler)
            handler.close()
        shutil.rmtree(out, ignore_errors=True)


def _check_resume(args, out: Path | None) -> None:
    """resume=true on a directory that holds no run is a mistyped out= far more often than a
    wish to start anew: refuse it. (A run killed before its first checkpoint left config.yaml
    and starts again; compare, transfer and sweep reuse what exists on their own.)"""
    from .config import parse_overrides

    if args.command not in ("pretrain", "finetune", "run") or out is None:
        return
    if parse_overrides(args.settings).get("resume", "").strip().lower() not in ("true", "yes", "1"):
        return
    if not (out / "config.yaml").is_file() and not _checkpoints(out):
        raise ConfigError(
            f"resume=true: nothing to resume at {out} (no idmm run there); check out= or "
            "leave resume=true out to start the run"
        )


def _checkpoints(out: Path) -> list[Path]:
    return list(out.glob("**/checkpoints/last.ckpt"))


def _main_process() -> bool:
    """Rank 0 or the only process, without importing torch for commands that never load it."""
    if "torch" not in sys.modules:
        return True
    from .engine.distributed import is_main_process

    return is_main_process()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .config_types import CheckpointError, TrainingError
    from .data.sources import DataError
    from .engine.log import warnings_as_log_lines

    out = _out_dir(args)
    existed = out is not None and out.exists()
    try:
        _check_resume(args, out)
        with warnings_as_log_lines():
            VERBS[args.command](args)
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"idmm: error: {e}", file=sys.stderr)
        if _main_process():
            _after_failure(str(e), out, existed)
        return 2
    except KeyboardInterrupt:
        if out is not None and not _checkpoints(out):
            print("idmm: interrupted before the first checkpoint: nothing to resume; run the "
                  "command again", file=sys.stderr)  # fmt: skip
        else:
            print("idmm: interrupted; continue with resume=true", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `idmm keys | head`: the reader has gone; nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    finally:
        # Under torchrun, exiting with the gloo group alive lets its threads abort the process
        # at interpreter shutdown ("terminate called without an active exception").
        if "torch" in sys.modules:  # a command that trained (keys and --help never load it)
            from .engine.distributed import teardown

            teardown()
    return 0
