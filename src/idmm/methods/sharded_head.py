"""The N-way instance head sharded across processes, for datasets where N x d no longer fits.

With N = 1.28M images the head (N x d weights, AdamW state, a B x N logit matrix per step) costs
more than the backbone. Sharded, each of K processes holds N/K rows; the features of the global
batch are gathered (with gradients), each process computes logits against its own rows, and the
softmax cross-entropy (label smoothing, soft CutMix targets) is assembled from all-reduces of the
row maxima, the exp-sums, the target logits and the logit sums. No process ever holds B x N.

Gradients: the loss is the mean over the global batch, identical on every process. Its gradient
with respect to a head shard is computed once, on its owner, and must not be averaged by DDP
(`ddp_ignore`). The feature gradient is multiplied by K so that, after `gather_with_grad` returns
each process its rows' total and DDP divides the backbone gradient by K, the backbone gets the
gradient of the global mean, exactly as with the replicated head.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..engine.distributed import gather, gather_with_grad, rank_and_world


def shard_rows(num_rows: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start, stop, rows per shard): shards are equal; the last one's padding is masked."""
    per = math.ceil(num_rows / world)
    start = min(num_rows, rank * per)
    return start, min(num_rows, start + per), per


def _all_reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    dist.all_reduce(x, op=op)
    return x


def _local(t: torch.Tensor, start: int, valid: int) -> torch.Tensor:
    return (t >= start) & (t < start + valid)


class _ShardedSoftCE(torch.autograd.Function):
    """Mean over rows of CE(softmax(f W^T + b), (1-eps)(lam e_a + (1-lam) e_b) + eps/N), with W,
    b this process's rows [start, start + valid) and f the gathered features."""

    @staticmethod
    def forward(ctx, feats, weight, bias, start, valid, n, target_a, target_b, lam, eps, world):
        logits = feats @ weight.T + bias
        logits[:, valid:] = float("-inf")  # padding rows of the last shard
        m = _all_reduce(logits.max(1).values, dist.ReduceOp.MAX)
        log_z = m + torch.log(_all_reduce(torch.exp(logits - m[:, None]).sum(1)))
        nll = []
        for t in (target_a, target_b):  # the target's logit lives on one process
            picked = torch.zeros_like(log_z)
            local = _local(t, start, valid)
            picked[local] = logits[local, t[local] - start]
            nll.append(log_z - _all_reduce(picked))
        uniform = log_z - _all_reduce(logits[:, :valid].sum(1)) / n
        per_row = (1 - eps) * (lam * nll[0] + (1 - lam) * nll[1]) + eps * uniform
        ctx.save_for_backward(feats, weight, torch.exp(logits - log_z[:, None]), target_a, target_b)
        ctx.args = (start, valid, n, lam, eps, world)
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad):
        feats, weight, p, target_a, target_b = ctx.saved_tensors
        start, valid, n, lam, eps, world = ctx.args
        q = torch.zeros_like(p)  # the soft target, this process's columns
        q[:, :valid] = eps / n
        rows = torch.arange(len(p), device=p.device)
        for t, w in ((target_a, (1 - eps) * lam), (target_b, (1 - eps) * (1 - lam))):
            local = _local(t, start, valid)
            q[rows[local], t[local] - start] += w
        g = (p - q) * (grad / len(p))
        return g @ weight * world, g.T @ feats, g.sum(0), *([None] * 8)


class ShardedInstanceHead(nn.Module):
    """Rows [start, stop) of a Linear(dim, N) head, padded to N/K rows per process."""

    def __init__(self, full: nn.Linear, rank: int, world: int):
        super().__init__()
        self.num_rows, self.world = full.out_features, world
        self.start, self.stop, per = shard_rows(self.num_rows, rank, world)
        weight = torch.zeros(per, full.in_features)
        bias = torch.zeros(per)
        weight[: self.stop - self.start] = full.weight.detach()[self.start : self.stop]
        bias[: self.stop - self.start] = full.bias.detach()[self.start : self.stop]
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def loss(self, feats, target_a, target_b, lam: float, smoothing: float) -> torch.Tensor:
        """The replicated head's `mixed_soft_ce(head(feats), ...)`, over the global batch."""
        device = feats.device.type
        with torch.autocast(device, enabled=False):
            everyone = gather_with_grad(feats.float())
            return _ShardedSoftCE.apply(
                everyone, self.weight.float(), self.bias.float(), self.start,
                self.stop - self.start, self.num_rows, gather(target_a), gather(target_b),
                float(lam), float(smoothing), self.world,
            )  # fmt: skip

    @torch.no_grad()
    def load_rows(self, full_weight: torch.Tensor, full_bias: torch.Tensor) -> None:
        n = self.stop - self.start
        self.weight[:n].copy_(full_weight[self.start : self.stop])
        self.bias[:n].copy_(full_bias[self.start : self.stop])


def gather_rows(shard: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The full (num_rows, ...) tensor from every process's padded shard (for checkpoints)."""
    return gather(shard.detach().contiguous())[:num_rows]


def local_rows(full: torch.Tensor, num_rows: int) -> torch.Tensor:
    """This process's padded shard of a full (num_rows, ...) tensor (for resuming)."""
    rank, world = rank_and_world()
    start, stop, per = shard_rows(num_rows, rank, world)
    out = full.new_zeros((per, *full.shape[1:]))
    out[: stop - start] = full[start:stop]
    return out
