"""What every pre-training method provides to the trainer.

A method owns its heads (never the backbone's classifier), says how a batch becomes its inputs
(`prepare`, run without gradients and outside autocast, so augmentation is full precision) and
computes its loss (`forward`, run under autocast and, with several processes, inside DDP).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.augment import MultiCrop


class Method(nn.Module):
    needs_labels = False
    # True: the backbone is a timm classifier with a num_classes-wide head (supervised training);
    # False: a pooled-feature backbone, the method owns its heads.
    classifier = False

    def __init__(
        self, cfg: Config, backbone: nn.Module, num_images: int, num_classes: int, views: MultiCrop
    ):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.views = views

    def prepare(
        self,
        images: torch.Tensor,
        indices: torch.Tensor,
        labels: torch.Tensor | None,
        rng: np.random.Generator,
        g: torch.Generator,
    ) -> Any:
        raise NotImplementedError

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [
            {
                "params": [p for p in self.parameters() if p.requires_grad],
                "lr_scale": 1.0,
                "weight_decay": weight_decay,
            }
        ]

    def sharded_rows(self) -> dict[str, int]:
        """Parameters split by rows across processes (name -> total rows): DDP leaves them
        alone and checkpoints hold them whole."""
        return {}

    def representation(self) -> nn.Module:
        """The network whose output is the learned representation: what the kNN monitor
        evaluates and `backbone.safetensors` holds."""
        return self.backbone

    @classmethod
    def build_views(cls, cfg: Config):
        """The batched augmentation that turns a uint8 batch into this method's inputs."""
        local_size = cfg.aug.local_size or cfg.img_size
        return MultiCrop(cfg.aug, cfg.img_size, local_size, cfg.data.mean, cfg.data.std)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook before each epoch (0-based), also after a resume."""

    def on_train_start(self, images: torch.Tensor) -> None:
        """Hook before the first step of a new (not resumed) run, with every cached image."""

    def on_step_end(self, epoch_progress: float) -> None:
        """Hook after each optimiser step (momentum teachers update here)."""
