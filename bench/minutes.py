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
replacing an earlier one's at the same budget. `--from ... --pool` instead pools the files' seeds
(the same runs, some seeds run later with `--set seed=K data.subset_seed=K data.split_seed=K`,
which is seed K of a multi-seed run) and summarises each entry again over all its seeds:

    python bench/minutes.py --from A.json B.json --pool --json AB.json --plot P.png
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
from idmm.commands.compare import METRICS, comparison_table, summarise  # noqa: E402
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


def per_seed_rows(result: dict, minutes: str) -> dict[int, dict[str, dict]]:
    """seed -> entry -> row at one budget of a minutes JSON: the rows it kept, or, for a file
    written before they were kept, rebuilt from each metric's values (in seed order from the
    file's first seed, its seed= setting or 0; the epochs are the first seed's)."""
    kept = result.get("per_seed", {}).get(minutes)
    if kept:
        return {int(seed): rows for seed, rows in kept.items()}
    first, out = int(result.get("settings", {}).get("seed", 0)), {}
    for name, s in result["budgets"][minutes].items():
        pre, ft = (int(e) for e in s["epochs"].split(" + "))
        for i in range(s["seeds"]):
            row = {"method": s["method"], "pretrain_epochs": pre, "finetune_epochs": ft}
            row.update({m: s[m]["values"][i] if s[m] else None for m in METRICS})
            out.setdefault(first + i, {})[name] = row
    return out


def summarise_pooled(per_seed: dict[int, dict], reference: str = "idmm") -> dict:
    """Each entry over the seeds it has; its difference to the reference paired over the seeds
    both have (entries of one budget may have been run with different seeds)."""
    names = list(dict.fromkeys(n for rows in per_seed.values() for n in rows))
    out = {}
    for name in names:
        mine = {seed: {name: rows[name]} for seed, rows in sorted(per_seed.items()) if name in rows}
        out[name] = {**summarise(mine, None)[name], "seed_list": sorted(mine)}
        both = {
            seed: {reference: rows[reference], name: rows[name]}
            for seed, rows in sorted(per_seed.items())
            if name in rows and reference in rows
        }
        if name != reference and both:
            out[name]["diff_vs_reference"] = summarise(both, reference)[name]["diff_vs_reference"]
    return out


def pool_seeds(sources: list[Path]) -> tuple[dict[int, dict], dict[int, dict], str]:
    """The rows of JSONs of one dataset pooled by budget and seed, a later file's row replacing an
    earlier one's of the same seed and entry (printed): (summaries, rows, dataset)."""
    rows_by_budget, datasets = {}, set()
    for src in sources:
        result = json.loads(src.read_text())
        datasets.add(result["data"])
        for minutes in result["budgets"]:
            pooled = rows_by_budget.setdefault(int(minutes), {})
            for seed, rows in per_seed_rows(result, minutes).items():
                replaced = [name for name in rows if name in pooled.get(seed, {})]
                if replaced:
                    print(f"{src}: replaces {', '.join(replaced)} of seed {seed} at {minutes} "
                          "minutes from an earlier --from file", file=sys.stderr)  # fmt: skip
                pooled.setdefault(seed, {}).update(rows)
    if len(datasets) != 1:
        sys.exit(f"--from files must be of one dataset: got {', '.join(sorted(datasets))}")
    summaries = {m: summarise_pooled(rows) for m, rows in sorted(rows_by_budget.items())}
    return summaries, rows_by_budget, datasets.pop()


def pooled_results(sources: list[Path], json_path: Path | None, plot_path: Path | None) -> None:
    """`--from ... --pool`: the pooled tables printed, written as one JSON and drawn."""
    by_budget, rows, data = pool_seeds(sources)
    for minutes, summary in by_budget.items():
        print(f"### {minutes} minutes (seeds pooled)\n\n{comparison_table(summary)}\n")
    if json_path:
        machines = [json.loads(src.read_text())["machine"] for src in sources]
        write_result(json_path, {"machine": describe(), "data": data, "pooled_from":
                                 [str(src) for src in sources], "source_machines": machines,
                                 "budgets": by_budget, "per_seed": rows})  # fmt: skip
    if plot_path:
        plot(by_budget, plot_path, f"{data}: test top-1 against minutes")


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    path.write_text(text + "\n")


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
    p.add_argument(
        "--pool",
        action="store_true",
        help="with --from: pool the files' seeds, summarise again (--json, --plot)",
    )
    args = p.parse_args()
    if args.sources and args.pool:
        pooled_results(args.sources, args.json, args.plot)
        return
    if args.sources:
        plot_results(args.sources, args.plot)
        return
    extra = dict(kv.split("=", 1) for kv in args.set)
    by_budget, rows, tables = {}, {}, []
    for minutes in [int(m) for m in args.minutes.split(",")]:
        summary = compare(args.config, methods=args.methods, seeds=args.seeds,
                          out=str(args.out / f"{minutes}m"), budget=f"{minutes}m",
                          **data_overrides(args.data), **extra)  # fmt: skip
        by_budget[minutes] = summary
        # each seed's row (compare.json), for pooling with seeds run later (--pool)
        kept = json.loads((args.out / f"{minutes}m" / "compare.json").read_text())
        rows[str(minutes)] = kept["per_seed"]
        tables.append(f"### {minutes} minutes\n\n{comparison_table(summary)}")
        print(tables[-1], flush=True)
    if args.json:
        write_result(args.json, {"machine": describe(), "data": args.data, "config": args.config,
                                 "settings": extra, "seeds": args.seeds, "budgets": by_budget,
                                 "per_seed": rows})  # fmt: skip
    if args.plot:
        plot(by_budget, args.plot, f"{args.data}: test top-1 against minutes")


if __name__ == "__main__":
    main()
