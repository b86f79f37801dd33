"""Run by tests/test_sharded_head.py under torchrun: the sharded instance head against the
replicated one on the same global batch; writes the largest differences."""

import json
import os
import sys

import torch
import torch.distributed as dist

from idmm.losses import mixed_soft_ce
from idmm.methods.sharded_head import ShardedInstanceHead
from idmm.models import trunc_normal_linear

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
n, d, b = 13, 6, 4  # 13 rows over 2 processes: the last shard has a padding row
full = trunc_normal_linear(d, n)
with torch.no_grad():
    full.weight.mul_(20)  # logits of a few units, so the softmax is not flat
feats = torch.randn(world * b, d)
target_a = torch.randint(0, n, (world * b,))
target_b = target_a.roll(1)
lam, eps = 0.7, 0.1

# the replicated head, one process, the whole batch
ref_feats = feats.clone().requires_grad_(True)
ref = mixed_soft_ce(full(ref_feats), target_a, target_b, lam, eps)
ref.backward()

head = ShardedInstanceHead(full, rank, world)
mine = slice(rank * b, (rank + 1) * b)
f = feats[mine].clone().requires_grad_(True)
loss = head.loss(f, target_a[mine], target_b[mine], lam, eps)
loss.backward()
rows = head.stop - head.start
mine_rows = slice(head.start, head.stop)
out = {
    "loss": abs(loss.item() - ref.item()),
    "weight_grad": (head.weight.grad[:rows] - full.weight.grad[mine_rows]).abs().max().item(),
    "bias_grad": (head.bias.grad[:rows] - full.bias.grad[mine_rows]).abs().max().item(),
    # DDP divides the backbone's gradient by the world size
    "feat_grad": (f.grad / world - ref_feats.grad[mine]).abs().max().item(),
    "padding_grad": head.weight.grad[rows:].abs().sum().item(),
    "rows": rows,
}
with open(f"{sys.argv[1]}.{rank}", "w") as fh:
    json.dump(out, fh)
dist.destroy_process_group()
# Skip the interpreter's teardown: on a loaded machine gloo's threads have aborted there
# ("terminate called without an active exception") after the results were already written.
os._exit(0)
