"""The machine's measured matmul peak, the denominator of model FLOP utilisation (MFU)."""

from __future__ import annotations

import time

import torch


def _gflops(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    torch.mm(a, b)  # warm-up: kernel selection, packing buffers
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    n, k = a.shape
    return 2 * n * k * b.shape[1] / best / 1e9


def matmul_peak(sizes=(512, 1024, 2048), repeats: int = 5,
                precisions=("fp32", "bf16")) -> dict[str, float]:  # fmt: skip
    """Best GFLOP/s of a square matmul over a few sizes, per precision (torch's own kernels,
    with the threads set in this process): the highest rate any model step could reach."""
    out = {}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name, dtype in ((p, dtypes[p]) for p in precisions):
        rates = []
        for n in sizes:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            rates.append(_gflops(a, b, repeats))
        out[name] = round(max(rates), 1)
    return out


if __name__ == "__main__":
    print(matmul_peak())
