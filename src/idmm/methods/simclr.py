"""SimCLR (Chen et al. 2020) with multi-crop: every crop of an image is a positive of every other
crop of it; all crops of all other images in the global batch are negatives.

Same trainer, multi-crop views and backbone as IDMM, so a comparison measures the objective
only. The loss (`losses.multi_positive_contrastive`) is keyed by an id, which SupCon replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import multi_positive_contrastive
from .base import Method, register
from .settings import ContrastiveConfig


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


@register
class SimCLR(Method):
    name, display_name = "simclr", "SimCLR"
    settings_key, Settings = "contrastive", ContrastiveConfig

    @classmethod
    def describe(cls, cfg):
        return f"temperature {cfg.contrastive.temperature}"

    def __init__(self, cfg, backbone, num_images, num_classes, views):
        super().__init__(cfg, backbone, num_images, num_classes, views)
        c = self.settings
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_dim)

    def ids(self, indices: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """What makes two crops positives: the same image."""
        return indices

    @torch.no_grad()
    def prepare(self, images, indices, labels, rng, g):
        ids = self.ids(indices, labels)
        crops = self.views(images, g)  # crop-major groups: crop k of every image, then k+1
        return crops, torch.cat([ids.repeat(spec.count) for spec in self.views.groups])

    def forward(self, batch):
        crops, ids = batch
        z = torch.cat([self.projector(self.backbone(x)) for x in crops])
        return multi_positive_contrastive(z, ids, self.settings.temperature), {}
