"""Accuracy benchmark: IDMM against the baselines and the references, several seeds, one command.

    python bench/accuracy.py --data fmnist-2040 --out runs/accuracy/fmnist2040 \\
        --json bench/results/accuracy_fmnist2040_cpu.json --plot docs/accuracy_fmnist2040.png
    python bench/accuracy.py --data sklearn-digits --sweep "" --out runs/accuracy/digits \\
        --json bench/results/accuracy_digits_cpu.json

Every ViT row uses the same recipe (--config, default the CPU recipe) and the same total epochs:
`idmm compare seeds=K` runs every entry (pre-train, kNN, linear probe, fine-tune) once per seed,
each seed with its own subset draw and splits; `idmm-paper` is the paper-faithful IDMM at the
recipe's resolution; `scratch` is the ViT classifier from random weights for pre-training +
fine-tuning epochs; `cnn` a ResNet-style CNN of similar size (resnet_cpu_small) trained the same
way. The table has mean ± std, the 95% interval and each row's paired difference to IDMM. Reference
rows that need no network: kNN (k=5, cosine) and logistic regression on raw pixels. The IDMM
sweep re-runs seed 0 with other pre-training epochs (the plot: accuracy against epochs).
Finished runs under --out are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from idmm import compare, run  # noqa: E402
from idmm.builders import load_data, make_config  # noqa: E402
from idmm.commands.compare import comparison_table  # noqa: E402
from idmm.plots import save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CNN = "resnet_cpu_small"
NATIVE = {"fmnist-2040": 28, "sklearn-digits": 8}  # raw-pixel references at the stored size


def data_overrides(data: str) -> dict:
    """The CPU recipe is written for FMNIST-2040; another dataset drops its subset."""
    if data == "fmnist-2040":
        return {}
    return {"data.source": data, "data.subset_per_class": None}


def vit_overrides(data: str, model: str | None) -> dict:
    """Settings of the ViT runs (IDMM, baselines, scratch): --model replaces the recipe's."""
    return dict(data_overrides(data), **({"model": model} if model else {}))


def raw_pixel_references(cfg_path: str, data: str) -> dict:
    """kNN (k=5, cosine) and logistic regression on the raw grey pixels: seconds, no network."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    cfg = make_config(cfg_path, **data_overrides(data), img_size=NATIVE.get(data, 28))
    data = load_data(cfg, None)  # the training split, as every idmm run's
    train, test = data.train, data.test

    def flat(d):
        return d.images[:, 0].reshape(len(d), -1).numpy() / 255.0, d.labels.numpy()

    (xtr, ytr), (xte, yte) = flat(train), flat(test)
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(xtr, ytr)
    logreg = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    return {
        "knn_raw_pixels": float((knn.predict(xte) == yte).mean()),
        "logreg_raw_pixels": float((logreg.predict(xte) == yte).mean()),
        "train_images": len(train),
        "test_images": len(test),
    }


def sweep(cfg_path: str, data: str, epochs: list[int], out: Path, seed0: Path,
          model: str | None = None) -> list[dict]:  # fmt: skip
    """IDMM at several pre-training lengths (seed 0, the same fine-tuning): accuracy vs epochs."""
    rows = []
    default = make_config(cfg_path).epochs
    for e in epochs:
        run_dir = seed0 / "idmm" if e == default else out / f"idmm_{e}ep"
        r = run(cfg_path, **vit_overrides(data, model), epochs=e, out=str(run_dir),
                resume=True, seed=0)  # fmt: skip
        pre = r.get("pretrain", {})
        rows.append({
            "pretrain_epochs": e,
            "knn_top1": r["knn"]["top1"],
            "linear_top1": r["linear"]["top1"],
            "finetune_top1": r["finetune"]["top1"],
            "minutes": ((pre.get("time_s") or 0.0) + (r["finetune"].get("time_s") or 0.0)) / 60,
        })  # fmt: skip
    return rows


def markdown(summary: dict, refs: dict, seeds: int) -> str:
    """`idmm compare`'s table (mean ± std, 95% interval, paired difference to IDMM) plus the
    raw-pixel references."""
    lines = [f"{seeds} seed(s); the test top-1 is evaluated once per run, after the last epoch.",
             "", comparison_table(summary)]  # fmt: skip
    for name, key, minutes in (
        ("kNN on raw pixels (k=5, cosine)", "knn_raw_pixels", "< 0.1"),
        ("logistic regression on raw pixels", "logreg_raw_pixels", "< 1"),
    ):
        lines.append(f"| {name} | - | - |  |  |  | {100 * refs[key]:.2f} |  |  | {minutes} |")
    return "\n".join(lines)


def plot(sweep_rows: list[dict], summary: dict, refs: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    x = [r["pretrain_epochs"] for r in sweep_rows]
    for key, label, style in (("finetune_top1", "IDMM + fine-tuning", "o-"),
                              ("linear_top1", "IDMM linear probe", "s--"),
                              ("knn_top1", "IDMM kNN", "^:")):  # fmt: skip
        ax.plot(x, [100 * r[key] for r in sweep_rows], style, label=label)
    lines = {"scratch": "ViT from scratch", "cnn": "small CNN from scratch"}
    for i, (key, label) in enumerate(lines.items()):
        if key in summary:
            ax.axhline(100 * summary[key]["finetune_top1"]["mean"], color=f"C{3 + i}", lw=1,
                       ls="-.", label=f"{label} ({summary[key]['epochs']} ep)")  # fmt: skip
    ax.axhline(100 * refs["logreg_raw_pixels"], color="grey", lw=1, ls=":",
               label="logistic regression, raw pixels")  # fmt: skip
    ax.set(xlabel="IDMM pre-training epochs (fine-tuning epochs fixed)", ylabel="test top-1 (%)",
           title=title)  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fmnist-2040", choices=sorted(NATIVE))
    p.add_argument("--config", default=str(ROOT / "configs/cpu/fmnist2040.yaml"))
    p.add_argument("--model", help="the ViT for IDMM, the baselines and scratch (default: the "
                   "recipe's)")  # fmt: skip
    p.add_argument("--methods", default="idmm,idmm-paper,simclr,supcon,dino,scratch")
    p.add_argument("--cnn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1, each its own subset draw")
    p.add_argument("--sweep", default="15,30,60,120", help="IDMM pre-training epochs (seed 0)")
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="accuracy against pre-training epochs (PNG)")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="print the table (and draw --plot) from an existing --json; train nothing",
    )
    args = p.parse_args()
    if args.table_only:
        r = json.loads(args.json.read_text())
        print(markdown(r["summary"], r["references"], r["seeds"]))
        if args.plot and r["sweep"]:
            plot(r["sweep"], r["summary"], r["references"], args.plot,
                 f"{r['data']}: accuracy vs IDMM pre-training")  # fmt: skip
        return
    refs = raw_pixel_references(args.config, args.data)
    print(f"raw pixels: kNN {100 * refs['knn_raw_pixels']:.2f}%, "
          f"logistic regression {100 * refs['logreg_raw_pixels']:.2f}%", flush=True)  # fmt: skip
    methods = args.methods + (",cnn" if args.cnn else "")
    summary = compare(args.config, methods=methods, seeds=args.seeds, out=str(args.out),
                      **vit_overrides(args.data, args.model))  # fmt: skip
    epochs = _ints(args.sweep)
    seed0 = args.out if args.seeds == 1 else args.out / "seed_0"
    sweep_rows = sweep(args.config, args.data, epochs, args.out / "sweep", seed0,
                       args.model) if epochs else []  # fmt: skip
    table = markdown(summary, refs, args.seeds)
    print(table)
    result = {
        "machine": describe(),
        "data": args.data,
        "config": args.config,
        "model": args.model or make_config(args.config).model,
        "seeds": args.seeds,
        "references": refs,
        "summary": summary,
        "sweep": sweep_rows,
        "per_seed": json.loads((args.out / "compare.json").read_text())["per_seed"],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot and sweep_rows:
        plot(sweep_rows, summary, refs, args.plot, f"{args.data}: accuracy vs IDMM pre-training")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
