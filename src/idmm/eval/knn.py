"""Weighted cosine k-nearest-neighbour classification (Wu et al. 2018; DINO's evaluation).

Each of the k nearest training features votes for its class with weight exp(cos / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_top1(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    ks=(10, 20, 100, 200),
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy (a fraction) for each k; k larger than the training set is clipped."""
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    kmax = min(max(ks), train_f.shape[0])
    correct = {k: 0 for k in ks}
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i : i + chunk] @ train_f.T
        top_sim, top_idx = sim.topk(kmax, dim=1)  # sorted, largest first
        weights = (top_sim / temperature).exp()
        onehot = F.one_hot(train_y[top_idx], num_classes).float()  # (b, kmax, C)
        y = test_y[i : i + chunk]
        for k in ks:
            kk = min(k, kmax)
            votes = (onehot[:, :kk] * weights[:, :kk, None]).sum(1)
            correct[k] += int((votes.argmax(1) == y).sum())
    n = test_f.shape[0]
    return {k: correct[k] / n for k in ks}


def headline_k(ks) -> int:
    """The k reported as `top1` (20, DINO's choice, when offered; fixed in advance, never tuned)."""
    return 20 if 20 in ks else sorted(ks)[len(ks) // 2]
