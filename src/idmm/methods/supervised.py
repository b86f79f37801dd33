"""Supervised training of a classifier: fine-tuning a pre-trained backbone, or, without one, the
from-scratch baseline with exactly the same recipe (so comparisons are fair).

The recipe is DeiT's, as the paper fine-tunes: random-resized crop, flip, RandAugment, colour
jitter, Mixup on even epochs and CutMix on odd ones, label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.optim import param_groups_layer_decay

from ..data.finetune_view import FinetuneView
from ..data.mixing import cutmix, mixup
from ..losses import mixed_soft_ce
from ..models import PreLogits
from .base import Method, register
from .settings import SupervisedConfig


@dataclass
class Batch:
    x: torch.Tensor
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: float


@register
class Supervised(Method):
    name, display_name = "supervised", "supervised"
    settings_key, Settings = "supervised", SupervisedConfig
    needs_labels = True
    classifier = True

    def __init__(self, cfg, backbone, num_images, num_classes, views):
        super().__init__(cfg, backbone, num_images, num_classes, views)
        self.epoch = 0

    @classmethod
    def build_views(cls, cfg):
        return FinetuneView(cls.settings_of(cfg), cfg.img_size, cfg.data.mean, cfg.data.std)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def param_groups(self, lr, weight_decay):
        layer_decay = getattr(self.cfg, "layer_decay", 1.0)  # a fine-tuning key, not supervised.*
        if layer_decay == 1.0:
            return super().param_groups(lr, weight_decay)
        # timm's groups by depth (its group_matcher), with weight decay kept on every parameter
        # as in the default groups, so that the lr schedule is the lever's only change
        return param_groups_layer_decay(self.backbone, weight_decay, layer_decay=layer_decay,
                                        weight_decay_exclude_1d=False)  # fmt: skip

    def representation(self):
        # `idmm pretrain method=supervised`: the features before the classifier
        return PreLogits(self.evaluated_backbone())

    @torch.no_grad()
    def prepare(self, images, indices, labels, rng: np.random.Generator, g: torch.Generator):
        ft = self.settings
        x = self.views(images, g)
        # The paper alternates by epoch rather than per batch (timm's switch_prob).
        use_mixup = self.epoch % 2 == 0
        alpha = ft.mixup_alpha if use_mixup else ft.cutmix_alpha
        if alpha <= 0:
            return Batch(x, labels, labels, 1.0)
        if use_mixup:
            x, mix = mixup(x, alpha, rng, g)
        else:
            x, mix = cutmix(x, alpha, rng, g)
        return Batch(x, labels, labels[mix.perm], mix.lam)

    def forward(self, b: Batch):
        logits = self.backbone(b.x)
        loss = mixed_soft_ce(logits, b.target_a, b.target_b, b.lam, self.settings.label_smoothing)
        return loss, {}
