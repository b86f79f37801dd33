"""Frozen features of a cached dataset: the deterministic eval view through the backbone."""

from __future__ import annotations

import torch
from torch import nn

from ..data.augment import eval_view
from ..engine.distributed import Runtime


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    size: int,
    mean,
    std,
    rt: Runtime,
    batch_size: int = 512,
    crop: float = 1.0,
) -> torch.Tensor:
    """(N, D) float32 outputs (features, or logits of a classifier) on the CPU, in the order of
    `images` (uint8 N x 3 x H x W)."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = eval_view(images[i : i + batch_size].to(rt.device), size, mean, std, crop)
        with rt.autocast():
            out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out)
