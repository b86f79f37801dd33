"""The runs an unfinished `bench/accuracy.py` (or `idmm compare seeds=K`) has finished so far,
one row per seed and entry, so that a benchmark longer than a session leaves its numbers behind.

    python bench/partial_results.py runs/accuracy/fmnist2040_v2 \\
        --json bench/results/accuracy_fmnist2040_partial_cpu.json --note "..."

No statistics: with some seeds missing, the table the finished benchmark prints is the one to
quote; this only keeps what exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402


def row(results: dict) -> dict:
    ft, pre = results.get("finetune", {}), results.get("pretrain", {})
    return {
        "finetune_top1": ft.get("top1"),
        "finetune_val_top1": ft.get("val_top1"),
        "knn_top1": results.get("knn", {}).get("top1"),
        "linear_top1": results.get("linear", {}).get("top1"),
        "pretrain_epochs": pre.get("epochs"),
        "finetune_epochs": ft.get("epochs"),
        "minutes": ((pre.get("time_s") or 0) + (ft.get("time_s") or 0)) / 60,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the benchmark's --out (with seed_<k>/<entry>/)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--note", default="", help="what to know about these numbers")
    args = p.parse_args()
    runs: dict[str, dict] = {}
    for seed_dir in sorted(args.out.glob("seed_*")):
        for entry in sorted(d for d in seed_dir.iterdir() if (d / "results.json").is_file()):
            runs.setdefault(seed_dir.name, {})[entry.name] = row(
                json.loads((entry / "results.json").read_text()))  # fmt: skip
    out = {"partial": True, "machine": describe(), "note": args.note, "out": str(args.out),
           "runs": runs}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    for seed, entries in runs.items():
        for name, r in entries.items():
            val = (
                ""
                if r["finetune_val_top1"] is None
                else f" (val {100 * r['finetune_val_top1']:.2f})"
            )
            print(f"{seed} {name:12} test {100 * r['finetune_top1']:.2f}{val}")


if __name__ == "__main__":
    main()
