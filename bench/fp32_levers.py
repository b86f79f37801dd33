"""The CPU recipe's pre-training step in fp32 (CPUs without bf16), with what might make it
faster: timm's fused attention (scaled_dot_product_attention), channels-last memory for the
convolutional stem, torch.compile; bf16 autocast as the reference where the CPU has it.

    python bench/fp32_levers.py --json bench/results/fp32_levers_cpu.json

Every variant is built once in this process and timed in alternating rounds (the order reversed
every round), so that load from elsewhere falls on all of them alike; medians of all timed steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from idmm_loop import IdmmLoop  # noqa: E402
from machine import describe  # noqa: E402
from throughput import write_images  # noqa: E402

from idmm.engine.distributed import cpu_has_bf16  # noqa: E402

CASE = dict(model="vit_cpu_small_conv", size=16, local=8, batch=64, stored=28)
VARIANTS = {
    "fp32": dict(precision="fp32"),
    "fp32 + fused attention": dict(precision="fp32", fused_attn=True),
    "fp32 + channels-last stem": dict(precision="fp32", channels_last=True),
    "fp32 + torch.compile": dict(precision="fp32", compile=True),
    "bf16 autocast (reference)": dict(precision="bf16"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=4, help="untimed steps (compile happens here)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    names = [n for n in VARIANTS if cpu_has_bf16() or not n.startswith("bf16")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_images(Path(tmp), CASE["stored"], per_class=64)
        loops = {n: IdmmLoop(CASE, str(folder), **VARIANTS[n]) for n in names}
        times = {n: [] for n in names}
        for n in names:
            loops[n].run(args.warmup)
        for r in range(args.rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                times[n] += [d + m for d, m in loops[n].run(args.steps)]
    base = statistics.median(times["fp32"])
    rows = []
    for n in names:
        step = statistics.median(times[n])
        rows.append({"variant": n, "step_s": round(step, 4),
                     "source_images_per_s": round(CASE["batch"] / step, 1),
                     "speedup_vs_fp32": round(base / step, 2)})  # fmt: skip
        print(f"{n:28} {step * 1000:7.1f} ms/step {CASE['batch'] / step:7.1f} img/s "
              f"{base / step:5.2f}x")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": describe(), "case": CASE, "steps_per_variant": len(times["fp32"]),
               "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
