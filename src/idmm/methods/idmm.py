"""IDMM: parametric instance discrimination with multi-crop, CutMix and label smoothing.

Every training image is its own class: a plain Linear(embed_dim, N) head on the pooled feature,
target = the image's index, cross-entropy. No projection head, normalisation, temperature, memory
bank or momentum encoder (Cao, Yu, Wu, ECCV 2022, and its official code). CutMix and label
smoothing matter because with N classes each head row otherwise gets a positive gradient about
once per epoch; soft targets update many more rows per step.

Beyond the paper, off by default, for short schedules (issue 17's levers): `idmm.head=cosine`
(normalised rows and features, logits / `idmm.temperature`, in fp32), `idmm.projector=H` (an MLP
of hidden width H between the backbone and the head; the exported features are taken before
it), `idmm.local_weight` (the weight of the local crops' loss against the global crops').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.mixing import cutmix
from ..engine.distributed import Runtime, rank_and_world
from ..eval.features import extract_features
from ..losses import mixed_soft_ce
from ..models import trunc_normal_linear
from .base import Method, register
from .settings import IDMMConfig
from .sharded_head import ShardedInstanceHead


class CosineHead(nn.Module):
    """N unit-norm rows; logits = cos(feature, row) / temperature, computed in fp32 (a bf16
    cosine keeps about 3 digits, too few for differences of 0.01)."""

    def __init__(self, dim: int, num_rows: int, temperature: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_rows, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.temperature = temperature

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        with torch.autocast(f.device.type, enabled=False):
            w = F.normalize(self.weight.float(), dim=-1)
            return F.linear(F.normalize(f.float(), dim=-1), w) / self.temperature


def projector(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(trunc_normal_linear(dim, hidden), nn.GELU(),
                         trunc_normal_linear(hidden, dim))  # fmt: skip


@dataclass
class Group:
    x: torch.Tensor  # crops of one group (global or local), crop-major
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: float


@register
class IDMM(Method):
    name, display_name, settings_key, Settings = "idmm", "IDMM", "idmm", IDMMConfig

    @classmethod
    def describe(cls, cfg):
        i = cfg.idmm
        levers = "".join(
            [
                f", cosine head T {i.temperature}" if i.head == "cosine" else "",
                f", projector {i.projector}" if i.projector else "",
                f", local weight {i.local_weight}" if i.local_weight != 1 else "",
            ]
        )
        return (f"CutMix alpha {i.cutmix_alpha}, label smoothing {i.label_smoothing}, "
                f"head init `{i.head_init}`{levers}")  # fmt: skip

    def __init__(self, cfg, backbone, num_images, num_classes, views):
        super().__init__(cfg, backbone, num_images, num_classes, views)
        c, dim = self.settings, backbone.num_features
        self.projector = projector(dim, c.projector) if c.projector else nn.Identity()
        if c.head == "cosine":
            self.head = CosineHead(dim, num_images, c.temperature)
        else:
            self.head = trunc_normal_linear(dim, num_images)
        rank, world = rank_and_world()
        self.sharded = self.settings.shard_head and world > 1
        if self.sharded:  # the same initial rows as the replicated head, split by process
            self.head = ShardedInstanceHead(self.head, rank, world)

    def sharded_rows(self):
        if not self.sharded:
            return {}
        return {"head.weight": self.head.num_rows, "head.bias": self.head.num_rows}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What the instance head reads: the backbone's feature, through the projector if any."""
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def prepare(self, images, indices, labels, rng: np.random.Generator, g: torch.Generator):
        c = self.settings
        groups = []
        for x, spec in zip(self.views(images, g), self.views.groups):
            target = indices.repeat(spec.count)
            if c.cutmix_alpha > 0 and rng.random() < c.cutmix_p:
                x, mix = cutmix(x, c.cutmix_alpha, rng, g)
                groups.append(Group(x, target, target[mix.perm], mix.lam))
            else:
                groups.append(Group(x, target, target, 1.0))
        return groups

    def forward(self, groups: list[Group]):
        # Each group is one forward pass (crops of one size); the group losses add, as in the
        # official code (a sum, not a mean over crop counts).
        loss, smoothing = 0.0, self.settings.label_smoothing
        for i, grp in enumerate(groups):
            f = self.embed(grp.x)
            if self.sharded:
                part = self.head.loss(f, grp.target_a, grp.target_b, grp.lam, smoothing)
            else:
                part = mixed_soft_ce(self.head(f), grp.target_a, grp.target_b, grp.lam, smoothing)
            loss = loss + (part if i == 0 else self.settings.local_weight * part)
        return loss, {}

    @torch.no_grad()
    def on_train_start(self, images):
        if self.settings.head_init != "imprint":
            return
        # A random head gives every image a random target code, so early training scatters
        # similar images apart (kNN accuracy falls below that of the random backbone). Starting
        # each row at its image's own feature makes the first gradients pull similar images
        # together, as non-parametric instance discrimination does.
        cfg = self.cfg
        feats = extract_features(
            nn.Sequential(self.backbone, self.projector),
            images,
            cfg.img_size,
            cfg.data.mean,
            cfg.data.std,
            Runtime(0, 1, 0, images.device, "fp32"),
            cfg.eval_batch_size,
        )
        norm = feats.norm(dim=1, keepdim=True).clamp(min=1e-6)
        scale = 1.0 / (self.settings.imprint_temperature * norm.mean())
        weight = feats / norm * scale
        if self.sharded:
            self.head.load_rows(weight, torch.zeros(len(weight)))
        elif isinstance(self.head, CosineHead):
            self.head.weight.copy_(feats / norm)  # the direction is all a cosine row has
        else:
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def param_groups(self, lr, weight_decay):
        head = list(self.head.parameters())
        head_ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if id(p) not in head_ids and p.requires_grad]
        return [
            {"params": rest, "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": head, "lr_scale": self.settings.head_lr_scale, "weight_decay": weight_decay},
        ]
