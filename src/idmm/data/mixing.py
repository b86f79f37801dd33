"""CutMix with exact mixing weights, drawn from an explicit numpy Generator (resumable)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _perm(n: int, g) -> torch.Tensor:
    """Mixing partners come from the rank's own batch (as timm's Mixup under DDP)."""
    g = getattr(g, "generator", g)  # a ShardGenerator's underlying generator
    return torch.randperm(n, generator=g, device=g.device)


@dataclass
class Mix:
    lam: float  # weight of the original targets: the fraction of pixels not pasted over
    perm: torch.Tensor  # row i got its box from row perm[i]
    box: tuple[int, int, int, int] | None  # y0, y1, x0, x1 of a CutMix box; None for Mixup


def cutmix(
    x: torch.Tensor,
    alpha: float,
    rng: np.random.Generator,
    g: torch.Generator,
    min_lam: float = 0.5,
) -> tuple[torch.Tensor, Mix]:
    """Paste one random box from a permuted copy of the batch into every row.

    lam ~ Beta(alpha, alpha), forced to max(lam, 1 - lam) (>= 0.5, as the paper does, so every
    crop stays mostly itself); the returned lam is recomputed from the clipped box area, so targets
    match the pixels exactly.
    """
    b, _, h, w = x.shape
    lam = float(rng.beta(alpha, alpha))
    if min_lam >= 0.5:
        lam = max(lam, 1 - lam)
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    perm = _perm(b, g).to(x.device)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, Mix(lam=lam, perm=perm, box=(int(y0), int(y1), int(x0), int(x1)))


def mixup(
    x: torch.Tensor, alpha: float, rng: np.random.Generator, g: torch.Generator
) -> tuple[torch.Tensor, Mix]:
    """Blend every row with a row of a permuted copy: lam * x + (1 - lam) * x[perm], with
    lam ~ Beta(alpha, alpha) forced >= 0.5 (the paper's code), so each row stays mostly itself."""
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1 - lam)
    perm = _perm(x.shape[0], g).to(x.device)
    return x * lam + x[perm] * (1 - lam), Mix(lam=lam, perm=perm, box=None)
