"""Pre-training speed: idmm against the conventional timm + torchvision loop, and against the
hardware (model FLOP utilisation).

    python bench/throughput.py --json bench/results/throughput_cpu.json

The reference (bench/reference_loop.py) is what the paper's official code does and what a user
would write: an ImageFolder of PNG files decoded by PIL, torchvision.transforms.v2 multi-crop per
image (2 global + 4 local crops, the same scales, flip, colour jitter, grayscale and blur as
idmm's defaults), a DataLoader with one worker per core, the same timm model, a Linear instance
head, timm's Mixup for CutMix + label smoothing and SoftTargetCrossEntropy per crop size, AdamW,
fp32. idmm's step is its trainer's: the decoded uint8 cache, batched augmentation and CutMix on
tensors, its default precision (bf16 autocast where the CPU has bf16 instructions).

Both pipelines live in their own process (so each one's memory is its own) and are run in
alternating rounds in one invocation: warm-up, then `--rounds` rounds of `--steps` timed steps
each, the order swapped every round; reported numbers are medians over all timed steps. The
same real images (FMNIST-2040; upscaled for the 112-px model) feed both.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from peak import matmul_peak  # noqa: E402

# name -> model, global size, local size, batch, stored image size (PNG side in pixels)
CASES = {
    "vit_cpu_small@16 (the CPU recipe)": dict(
        model="vit_cpu_small", size=16, local=8, batch=64, stored=28
    ),
    "deit_tiny@112 (the paper's pre-training size)": dict(
        model="deit_tiny_patch16_224", size=112, local=48, batch=32, stored=128
    ),
}


def pipelines() -> tuple[str, ...]:
    """The conventional loop and idmm's step in fp32, and both with bf16 autocast only where
    the CPU has bf16 instructions (elsewhere bf16 is emulated, slower than fp32, and no one
    would train in it)."""
    from idmm.engine.distributed import cpu_has_bf16

    both = ("reference", "idmm_fp32")
    return (*both, "reference_bf16", "idmm_bf16") if cpu_has_bf16() else both


PIPELINES = pipelines()


def write_images(root: Path, side: int, per_class: int = 204) -> Path:
    """FMNIST-2040's training images (or fewer per class) as PNG files in ImageFolder layout."""
    from PIL import Image

    from idmm.data.sources import open_source, subset_per_class

    src = subset_per_class(open_source("fmnist-2040", "train"), per_class, 0)
    folder = root / f"fmnist2040_{side}px"
    for i in range(len(src)):
        d = folder / f"class_{src.labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        img = src.load(i)
        if img.size != (side, side):
            img = img.resize((side, side), Image.BICUBIC)
        img.save(d / f"{i:05d}.png")
    return folder


def serve(conn, kind: str, case: dict, folder: str, threads: int) -> None:
    """A pipeline in its own process: answers ("run", n) with n steps' (data_s, model_s)."""
    import torch

    torch.set_num_threads(threads)
    if kind.startswith("reference"):
        from reference_loop import ReferenceLoop

        loop = ReferenceLoop(case, folder, "bf16" if kind.endswith("bf16") else "fp32")
    else:
        from idmm_loop import IdmmLoop

        loop = IdmmLoop(case, folder, precision=kind.split("_")[1])
    conn.send(loop.info())
    while True:
        cmd, n = conn.recv()
        if cmd == "stop":
            break
        conn.send(loop.run(n))
    conn.send(loop.final())


def bench_case(name: str, case: dict, folder: Path, args) -> dict:
    ctx = mp.get_context("spawn")
    procs, conns, info = {}, {}, {}
    for kind in PIPELINES:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=serve, args=(child, kind, case, str(folder), args.threads))
        p.start()
        child.close()  # so a crashed pipeline ends the wait with EOFError instead of a hang
        procs[kind], conns[kind] = p, parent
        info[kind] = parent.recv()
    times = {k: [] for k in procs}
    for k in procs:  # warm-up (allocator, oneDNN kernels, worker start-up)
        conns[k].send(("run", args.warmup))
        conns[k].recv()
    for r in range(args.rounds):
        for k in PIPELINES if r % 2 == 0 else PIPELINES[::-1]:
            conns[k].send(("run", args.steps))
            times[k] += conns[k].recv()
    result = {"case": name, **case}
    for k in procs:
        conns[k].send(("stop", 0))
        final = conns[k].recv()
        procs[k].join()
        result[k] = summarise(times[k], case["batch"], info[k], final)
    ips = {k: result[k]["source_images_per_s"] for k in procs}
    result["speedup_fp32"] = round(ips["idmm_fp32"] / ips["reference"], 2)  # like for like
    if "idmm_bf16" in ips:
        result["speedup"] = round(ips["idmm_bf16"] / ips["reference"], 2)  # idmm's default
        result["speedup_vs_reference_bf16"] = round(ips["idmm_bf16"] / ips["reference_bf16"], 2)
    else:
        result["speedup"] = result["speedup_fp32"]  # fp32 is the default without bf16
    return result


def summarise(times: list[tuple[float, float]], batch: int, info: dict, final: dict) -> dict:
    step = statistics.median(d + m for d, m in times)
    data = statistics.median(d for d, _ in times)
    model = statistics.median(m for _, m in times)
    return {
        **info,
        **final,
        "steps_timed": len(times),
        "step_s": round(step, 4),
        "source_images_per_s": round(batch / step, 1),
        "crops_per_s": round(batch * info["crops_per_image"] / step, 1),
        "data_s": round(data, 4),
        "model_s": round(model, 4),
        "achieved_gflops": round(info["step_gflop"] / step, 1),
        "achieved_gflops_model_only": round(info["step_gflop"] / model, 1),
    }


def _precision(kind: str) -> str:
    return "bf16" if kind.endswith("bf16") else "fp32"


def add_mfu(result: dict, peaks: dict) -> None:
    for k in PIPELINES:
        r = result[k]
        peak = peaks[r["precision"]]
        r["peak_gflops"] = peak
        r["mfu"] = round(r["achieved_gflops"] / peak, 3)
        r["mfu_model_only"] = round(r["achieved_gflops_model_only"] / peak, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="all", help="comma-separated case numbers (1,2) or all")
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=6, help="untimed steps first, per pipeline")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    precisions = sorted({_precision(k) for k in PIPELINES})
    peaks = matmul_peak(precisions=precisions)
    print("measured matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    names = list(CASES) if args.cases == "all" else [list(CASES)[int(i) - 1]
                                                       for i in args.cases.split(",")]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            case = CASES[name]
            folder = write_images(Path(tmp), case["stored"])
            r = bench_case(name, case, folder, args)
            add_mfu(r, peaks)
            rows.append(r)
            print_row(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": describe(), "matmul_peak_gflops": peaks, "cases": rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def print_row(r: dict) -> None:
    bf16 = (f", idmm with bf16 / reference with bf16 = {r['speedup_vs_reference_bf16']:.2f}x"
            if "speedup_vs_reference_bf16" in r else "")  # fmt: skip
    print(f"\n{r['case']}: idmm / reference = {r['speedup']:.2f}x (both fp32: "
          f"{r['speedup_fp32']:.2f}x{bf16})")  # fmt: skip
    print(f"  {'':14} {'img/s':>8} {'crops/s':>8} {'data s':>7} {'model s':>8} {'MFU':>6} "
          f"{'MFU(model)':>10} {'peak MB':>8} precision")  # fmt: skip
    for k in PIPELINES:
        x = r[k]
        print(
            f"  {k:14} {x['source_images_per_s']:8.1f} {x['crops_per_s']:8.1f} "
            f"{x['data_s']:7.3f} {x['model_s']:8.3f} {100 * x['mfu']:5.1f}% "
            f"{100 * x['mfu_model_only']:9.1f}% {x['peak_rss_mb']:8.0f} {x['precision']}"
        )


if __name__ == "__main__":
    main()
