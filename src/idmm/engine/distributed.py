"""Device, precision and torch.distributed set-up, read from the environment (torchrun).

No `RANK` in the environment means one process. With torchrun, every process joins the default
process group (NCCL on CUDA, gloo on CPU) and the trainer wraps the method in DDP.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (avx512_bf16 or AMX): there bf16 matmul is ~4x fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("precision=fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def setup(device: str = "auto", precision: str = "auto") -> Runtime:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank, world, local, dev, resolve_precision(precision, dev))


def barrier(rt: Runtime) -> None:
    """Wait for every process (no-op for one): what rank 0 wrote is there after it."""
    if rt.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, rt: Runtime) -> float:
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return float(t.item()) / rt.world_size


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes shared files."""
    return rank_and_world()[0] == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every process's `x`, concatenated in rank order, with gradients flowing back to each
    process's own rows (the contrastive losses' negatives come from the whole global batch)."""
    if rank_and_world()[1] == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x))


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every process's `x` concatenated in rank order, without gradients."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over processes (a new tensor; `x` is unchanged)."""
    if rank_and_world()[1] == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x
