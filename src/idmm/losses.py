"""Losses. One function each; each is checked against a direct computation in the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .engine.distributed import all_reduce_sum, gather, gather_with_grad, rank_and_world


def mixed_soft_ce(
    logits: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: float,
    smoothing: float,
) -> torch.Tensor:
    """Cross-entropy against lam*onehot(a) + (1-lam)*onehot(b), label-smoothed by `smoothing`.

    The soft target is (1-eps)*(lam*e_a + (1-lam)*e_b) + eps/N, computed with gathers instead of
    a dense (B, N) target: with an instance head N is the dataset size, and a dense target at
    N = 1.28M would cost more memory than the model.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    nll_a = -logp.gather(1, target_a.view(-1, 1)).squeeze(1)
    nll_b = -logp.gather(1, target_b.view(-1, 1)).squeeze(1)
    uniform = -logp.mean(dim=-1)
    loss = (1 - smoothing) * (lam * nll_a + (1 - lam) * nll_b) + smoothing * uniform
    return loss.mean()


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a dense soft target (B, C): the reference the tests compare with."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def multi_positive_contrastive(z: torch.Tensor, ids: torch.Tensor, temperature: float):
    """InfoNCE with every other crop of the same id as a positive (SimCLR: id = image index;
    SupCon: id = class label), correct for any number of crops per image.

    z: (n, d) projections of this process's crops, ids: (n,). With several processes the keys
    are every process's crops (gathered with gradients), so negatives come from the global
    batch. Anchor i's loss is the mean over its positives p of -log(exp(s_ip) / sum_{k != i}
    exp(s_ik)), s = cosine / temperature (SupCon's L_out). An anchor without a positive (a class
    seen once in the batch, one crop per image) has nothing to pull towards: it is left out
    instead of dividing by zero. The mean is over the valid anchors of all processes, so K
    processes x n crops give the loss (and, after DDP's gradient average, the gradient) of one
    process with K*n crops. Computed in fp32 under autocast too (as IDMM's cross-entropy): in
    bf16, cosines / 0.2 carry only about 2-3 significant digits.
    """
    with torch.autocast(z.device.type, enabled=False):
        return _multi_positive_contrastive(z.float(), ids, temperature)


def _multi_positive_contrastive(z: torch.Tensor, ids: torch.Tensor, temperature: float):
    rank, world = rank_and_world()
    z = F.normalize(z, dim=1)
    keys, key_ids = gather_with_grad(z), gather(ids)
    n = z.shape[0]
    logits = z @ keys.T / temperature
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[torch.arange(n), rank * n + torch.arange(n)] = True
    logits = logits.masked_fill(own, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (ids.view(-1, 1) == key_ids.view(1, -1)) & ~own
    count = positive.sum(1)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1) / count.clamp(min=1)
    valid = count > 0
    total = all_reduce_sum(valid.sum().to(z.dtype)).clamp(min=1)
    return per_anchor[valid].sum() * world / total
