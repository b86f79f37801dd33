"""Supervised training of a classifier: fine-tuning a pre-trained backbone, or, without one, the
from-scratch baseline with exactly the same recipe (so comparisons are fair).

The recipe is DeiT's, as the paper fine-tunes: random-resized crop, flip, RandAugment, colour
jitter, Mixup on even epochs and CutMix on odd ones, label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.finetune_view import FinetuneView
from ..data.mixing import cutmix, mixup
from ..losses import mixed_soft_ce
from ..models import PreLogits
from .base import Method, register


@dataclass
class SupervisedConfig:
    """The classification recipe (DeiT's, as the paper fine-tunes): the `supervised.*` settings
    of `idmm pretrain method=supervised`, and the top-level keys of a fine-tuning run (which is
    this method on a classifier, pre-trained or not)."""

    label_smoothing: float = 0.1  # label smoothing of the class targets
    # lambda ~ Beta(alpha, alpha) forced >= 0.5, as the official code; alpha 0 turns either off
    mixup_alpha: float = 0.5  # Mixup on even epochs (0-based) ...
    cutmix_alpha: float = 0.5  # ... CutMix on odd ones
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    flip_p: float = 0.5  # probability of a horizontal flip
    randaug_ops: int = 2  # RandAugment ops per image (0 = off) ...
    randaug_magnitude: tuple[float, float] = (1.0, 9.0)  # ... magnitude ~ U(lo, hi) of 10 ...
    randaug_p: float = 0.5  # ... each op applied with this probability (UDA RandAugment)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # bright/contr/sat/hue
    color_jitter_p: float = 0.4  # probability of colour jitter, per image
    grayscale_p: float = 0.2  # probability of grayscale, per image
    eval_crop: float = 0.875  # evaluation: resize to size / eval_crop, then centre crop

    def problems(self) -> list[tuple[str, bool, str]]:
        lo, hi = self.randaug_magnitude
        c_lo, c_hi = self.crop_scale
        return [
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("mixup_alpha", self.mixup_alpha >= 0, "0 (off) or more"),
            ("cutmix_alpha", self.cutmix_alpha >= 0, "0 (off) or more"),
            ("randaug_ops", self.randaug_ops >= 0, "0 (off) or more"),
            ("randaug_magnitude", 0 <= lo <= hi <= 10, "(lo, hi) with 0 <= lo <= hi <= 10"),
            ("randaug_p", 0 <= self.randaug_p <= 1, "in [0, 1]"),
            ("eval_crop", 0 < self.eval_crop <= 1, "in (0, 1]"),
            ("crop_scale", 0 < c_lo <= c_hi <= 1, "(lo, hi) with 0 < lo <= hi <= 1"),
        ]


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
