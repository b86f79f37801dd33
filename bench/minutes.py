"""Accuracy against minutes: each method trained within the same time budget (`budget=`), at
several budgets, on one dataset; the table and a plot with minutes on the x axis.

    python bench/minutes.py --data fmnist-2040 --minutes 5,10,20 --seeds 1 \\
        --out runs/minutes/fmnist2040 --json bench/results/minutes_fmnist2040_cpu.json \\
        --plot docs/minutes_fmnist2040.png

Every entry of a budget is an `idmm compare ... budget=Nm` entry: the recipe's epochs set the
split between its stages, the budget their length (idmm.engine.budget); the scratch ViT and the
CNN get the same minutes for their one stage. Selection is on validation; test is evaluated once
per run. Finished runs under --out are reused. `--from A.json B.json --plot P` draws one plot from
earlier results of the same dataset (budgets or methods run at different times, or with other
seeds) and trains nothing; the entries drawn are those every budget has, a later file's entry
replacing an earlier one's at the same budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import data_overrides  # noqa: E402
from machine import describe  # noqa: E402

from idmm import compare  # noqa: E402
from idmm.commands.compare import comparison_table  # noqa: E402
from idmm.plots import save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(by_budget: dict[int, dict], path: Path, title: str) -> list[str]:
    """Test top-1 against minutes for the entries every budget has; returns their names. The
    budgets double, so the x axis is logarithmic; the methods sit side by side at each budget
    (a few percent apart) so that their interval bars do not hide one another."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    names = [n for n in next(iter(by_budget.values())) if all(n in s for s in by_budget.values())]
    budgets = sorted(by_budget)
    for i, name in enumerate(names):
        shift = 1 + 0.025 * (i - (len(names) - 1) / 2)
        xs, ys, err = [], [], []
        for minutes in budgets:
            s = by_budget[minutes][name]["finetune_top1"]
            xs.append(minutes * shift)
            ys.append(100 * s["mean"])
            err.append(100 * (s["mean"] - s["ci95"][0]) if s["ci95"] else 0)  # 95% interval
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{i}",
                    label=by_budget[budgets[0]][name]["method"])  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(m) for m in budgets])
    ax.minorticks_off()
    ax.set(xlabel="budget (minutes of 2 CPU cores, whole run)", ylabel="test top-1 (%)",
           title=title)  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title="bars: 95% interval over seeds; no bar: one seed",
              title_fontsize=7)  # fmt: skip
    save_figure(fig, path)
    return names


def merge_results(sources: list[Path]) -> tuple[dict[int, dict], str]:
    """The entries of earlier JSONs of one dataset, by budget. Files may hold other entries of the
    same budget (methods run at different times); an entry at a budget in two files is taken from
    the later file (a rerun with more seeds or a fixed planner), and the replacement is printed."""
    by_budget, datasets = {}, set()
    for src in sources:
        result = json.loads(src.read_text())
        datasets.add(result["data"])
        for minutes, summary in result["budgets"].items():
            merged = by_budget.setdefault(int(minutes), {})
            replaced = [name for name in summary if name in merged]
            if replaced:
                print(f"{src}: replaces {', '.join(replaced)} at {minutes} minutes from an "
                      "earlier --from file", file=sys.stderr)  # fmt: skip
            merged.update(summary)
    if len(datasets) != 1:
        sys.exit(f"--from files must be of one dataset: got {', '.join(sorted(datasets))}")
    return by_budget, datasets.pop()


def plot_results(sources: list[Path], path: Path | None) -> list[str]:
    """One plot from earlier JSONs of one dataset (`merge_results`)."""
    if path is None:
        sys.exit("--from draws a plot: give --plot PATH")
    by_budget, data = merge_results(sources)
    return plot(by_budget, path, f"{data}: test top-1 against minutes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fmnist-2040")
    p.add_argument("--config", default=str(ROOT / "configs/cpu/fmnist2040.yaml"))
    p.add_argument("--methods", default="idmm,simclr,scratch,cnn")
    p.add_argument("--minutes", default="5,10,20")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more settings for every run (e.g. img_size=32 for clipart)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/minutes"))
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="JSON",
                   help="plot these earlier results (with --plot) instead of training")  # fmt: skip
    args = p.parse_args()
    if args.sources:
        plot_results(args.sources, args.plot)
        return
    extra = dict(kv.split("=", 1) for kv in args.set)
    by_budget, tables = {}, []
    for minutes in [int(m) for m in args.minutes.split(",")]:
        summary = compare(args.config, methods=args.methods, seeds=args.seeds,
                          out=str(args.out / f"{minutes}m"), budget=f"{minutes}m",
                          **data_overrides(args.data), **extra)  # fmt: skip
        by_budget[minutes] = summary
        tables.append(f"### {minutes} minutes\n\n{comparison_table(summary)}")
        print(tables[-1], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": describe(), "data": args.data, "config": args.config,
                  "settings": extra, "seeds": args.seeds,
                  "budgets": {str(m): s for m, s in by_budget.items()}}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(by_budget, args.plot, f"{args.data}: test top-1 against minutes")


if __name__ == "__main__":
    main()
