"""IDMM pre-training step throughput: source images/s, crops/s, data vs model time, memory.

    python bench/pretrain_step.py                 # both models, this machine's defaults
    python bench/pretrain_step.py --steps 10 --json bench/results/pretrain_step.json

Measures idmm's own step (batched augmentation + CutMix + forward/backward + AdamW) on random
uint8 images at the cache resolution, after warm-up, as the median of several timed steps; with
--compile also under torch.compile. bench/throughput.py compares idmm's step with the
conventional per-image DataLoader loop on real images and reports the FLOP utilisation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from idmm.builders import build_method
from idmm.config import build_config
from idmm.engine.distributed import setup
from idmm.engine.trainer import peak_memory_mb
from idmm.models import count_params

CPU_CASES = {
    "vit_cpu_small@28 (FMNIST recipe)": {
        "model": "vit_cpu_small",
        "img_size": "28",
        "aug.local_size": "16",
        "batch_size": "64",
    },
    "deit_tiny_patch16_224@112 (paper)": {
        "model": "deit_tiny_patch16_224",
        "img_size": "112",
        "batch_size": "32",
    },
}
# bench/gpu_check.sh: the paper's shapes at the paper's batch, IDMM and a fine-tuning step
GPU_CASES = {
    "deit_tiny@112 IDMM b256": {
        "model": "deit_tiny_patch16_224",
        "img_size": "112",
        "batch_size": "256",
    },
    # deit_tiny's 192-wide matrices do not fill an H200 at batch 256 (3.4% of its bf16 peak,
    # docs/benchmarks.md): the larger batch says how much of that is size
    "deit_tiny@112 IDMM b1024": {
        "model": "deit_tiny_patch16_224",
        "img_size": "112",
        "batch_size": "1024",
    },
    "deit_tiny@224 finetune b256": {
        "model": "deit_tiny_patch16_224",
        "img_size": "224",
        "batch_size": "256",
        "method": "supervised",
    },
}


def bench_case(overrides: dict, steps: int, n_images: int = 2040, compile: bool = False) -> dict:
    cfg = build_config(
        overrides={**overrides, "data.mean": "0.5,0.5,0.5", "data.std": "0.25,0.25,0.25"}
    )
    rt = setup("auto", "auto")
    torch.manual_seed(0)
    method = build_method(cfg, rt, n_images, 10).to(rt.device)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, fused=rt.device.type == "cuda")
    forward = torch.compile(method) if compile else method
    b = cfg.batch_size
    images = torch.randint(
        0, 256, (b, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=rt.device
    )
    idx = torch.arange(b, device=rt.device)
    labels = idx % 10  # used by the supervised (fine-tuning) case only
    rng, g = np.random.default_rng(0), torch.Generator(device=rt.device).manual_seed(0)
    data_t, model_t = [], []
    for i in range(steps + (5 if compile else 2)):  # warm-up steps (compiling takes several)
        t0 = time.perf_counter()
        batch = method.prepare(images, idx, labels, rng, g)
        _sync(rt.device)
        t1 = time.perf_counter()
        with rt.autocast():
            loss, _ = forward(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(rt.device)
        if i >= (5 if compile else 2):
            data_t.append(t1 - t0)
            model_t.append(time.perf_counter() - t1)
    step = statistics.median(d + m for d, m in zip(data_t, model_t))
    crops = 1 if cfg.method == "supervised" else cfg.aug.global_crops + cfg.aug.local_crops
    return {
        "model": cfg.model,
        "method": cfg.method,
        "compile": compile,
        "img_size": cfg.img_size,
        "local_size": cfg.aug.local_size,
        "params_m": round(count_params(method.backbone) / 1e6, 2),
        "batch": b,
        "precision": rt.precision,
        "device": str(rt.device),
        "source_images_per_s": round(b / step, 1),
        "crops_per_s": round(b * crops / step, 1),
        "data_fraction": round(statistics.median(data_t) / step, 3),
        "peak_memory_mb": round(peak_memory_mb(rt.device)),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write(path: Path | None, rows: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"threads": torch.get_num_threads(), "cases": rows}, indent=2) + "\n"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per model (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--cases", choices=["cpu", "gpu"], default="cpu", help="which shapes")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = CPU_CASES if args.cases == "cpu" else GPU_CASES
    rows = {}
    for name, o in cases.items():
        rows[name] = bench_case(o, args.steps)
        write(args.json, rows)  # after each case: a run cut short by a timeout keeps the rest
        if args.compile:
            rows[name + " compile"] = bench_case(o, args.steps, compile=True)
            write(args.json, rows)
    print(f"{'case':36} {'img/s':>9} {'crops/s':>8} {'data %':>7} {'peak MB':>8}  precision")
    for name, r in rows.items():
        print(
            f"{name:36} {r['source_images_per_s']:9.1f} {r['crops_per_s']:8.1f} "
            f"{100 * r['data_fraction']:6.1f}% {r['peak_memory_mb']:8d}  {r['precision']}"
        )


if __name__ == "__main__":
    main()
