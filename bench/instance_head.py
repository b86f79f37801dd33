"""What the N-way instance head costs as N grows, against the backbone's step.

    python bench/instance_head.py --threads 2 --json bench/results/instance_head_cpu.json

The head is IDMM's Linear(d, N) with the mixed soft-target loss and AdamW, timed alone on a batch
of features (the crops of one step), then compared with the whole IDMM step of the same shapes
(bench/pretrain_step.py's numbers). Memory is counted from the tensors: weights, gradients and
AdamW's two moments (4 x N x (d + 1) floats) plus the (crops x N) logits and their gradient.
Large N is measured where it fits in time and extrapolated linearly beyond (stated as such).

Under torchrun, `--sharded` times `idmm.shard_head=true`'s head instead: each of K processes holds
N/K rows and its 1/K of the crops, and the softmax spans the processes (gloo on CPU):

    torchrun --nproc_per_node=2 bench/instance_head.py --sharded --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from idmm.engine.distributed import rank_and_world
from idmm.losses import mixed_soft_ce
from idmm.methods.sharded_head import ShardedInstanceHead
from idmm.models import trunc_normal_linear


def time_head(n: int, d: int, crops: int, steps: int, sharded: bool = False) -> dict:
    torch.manual_seed(0)
    rank, world = rank_and_world()
    head = trunc_normal_linear(d, n)
    if sharded:
        head = ShardedInstanceHead(head, rank, world)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
    feats = torch.randn(crops // world, d)  # this process's crops
    target = torch.randint(0, n, (crops // world,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        f = feats.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if sharded:
                loss = head.loss(f, target, target.roll(1), 0.7, 0.1)
            else:
                loss = mixed_soft_ce(head(f), target, target.roll(1), 0.7, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if world > 1:
            dist.barrier()  # the slowest process sets the pace
        if i:
            times.append(time.perf_counter() - t0)
    rows = head.weight.shape[0]  # per process: N, or N/K when sharded
    state_mb = 4 * rows * (d + 1) * 4 / 2**20
    logits_mb = 2 * crops * rows * 4 / 2**20
    return {"n": n, "step_s": statistics.median(times), "state_mb": state_mb,
            "logits_mb": logits_mb}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dim", type=int, default=128, help="feature width (vit_cpu_small: 128)")
    p.add_argument("--batch", type=int, default=64, help="source images per step")
    p.add_argument("--crops", type=int, default=6, help="crops per image (2 global + 4 local)")
    p.add_argument(
        "--backbone-step-s",
        type=float,
        default=64 / 215,
        help="the whole IDMM step without the head's share, seconds (default: the "
        "FMNIST recipe at 28 px, bench/pretrain_step.py: 215 img/s at batch 64)",
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--sharded", action="store_true", help="the sharded head (under torchrun)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sharded:
        dist.init_process_group("gloo")
    world = rank_and_world()[1]
    crops = args.batch * args.crops
    rows = [time_head(n, args.dim, crops, args.steps, args.sharded)
            for n in (2_040, 20_000, 200_000)]  # fmt: skip
    per_n = rows[-1]["step_s"] / rows[-1]["n"]  # the head is linear in N at large N
    for n in (1_281_167,):
        per = -(-n // world)
        rows.append({"n": n, "step_s": per_n * n, "state_mb": 4 * per * (args.dim + 1) * 4 / 2**20,
                     "logits_mb": 2 * crops * per * 4 / 2**20, "extrapolated": True})  # fmt: skip
    if rank_and_world()[0]:
        return  # one process prints
    mode = f"sharded over {world} processes" if args.sharded else "one process"
    print(f"d={args.dim}, {crops} crops per step, {mode} (memory per process); "
          f"backbone step {args.backbone_step_s:.3f} s")  # fmt: skip
    print(f"{'N':>10} {'head s':>8} {'x backbone':>10} {'state MB':>9} {'logits MB':>10}")
    for r in rows:
        r["head_over_backbone"] = r["step_s"] / args.backbone_step_s
        mark = "  (extrapolated)" if r.get("extrapolated") else ""
        print(f"{r['n']:>10} {r['step_s']:8.3f} {r['head_over_backbone']:10.2f} "
              f"{r['state_mb']:9.0f} {r['logits_mb']:10.0f}{mark}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
