"""What every pre-training method provides to the trainer.

A method owns its heads (never the backbone's classifier), says how a batch becomes its inputs
(`prepare`, run without gradients and outside autocast, so augmentation is full precision) and
computes its loss (`forward`, run under autocast and, with several processes, inside DDP).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..data.augment import MultiCrop

METHODS: dict[str, type[Method]] = {}  # name -> class, filled by @register


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available as `method=<cls.name>`."""
    METHODS[cls.name] = cls
    return cls


class Method(nn.Module):
    name: ClassVar[str]  # the `method=` value
    display_name: ClassVar[str]  # how tables and reports name it
    # The method's own settings: a dataclass, the config section `settings_key` (e.g. `idmm.*`)
    settings_key: ClassVar[str | None] = None
    Settings: ClassVar[type | None] = None
    needs_labels = False
    # True: the backbone is a timm classifier with a num_classes-wide head (supervised training);
    # False: a pooled-feature backbone, the method owns its heads.
    classifier = False

    def __init__(self, cfg: Any, backbone: nn.Module, num_images: int, num_classes: int,
                 views: MultiCrop):  # fmt: skip
        super().__init__()
        self.cfg = cfg  # the run's config: training keys at its top level
        self.settings = self.settings_of(cfg)
        self.backbone = backbone
        self.views = views
        # ema=D: a moving average of the backbone's weights (and buffers), which evaluation
        # and export use. Warmed up as timm's (decay 1 - (1 + step)^(-2/3), at most D), so that
        # short runs average over their last few hundred steps rather than their start.
        decay = getattr(cfg, "ema", 0.0)
        self.ema = ModelEmaV3(backbone, decay=decay, use_warmup=True) if decay else None
        if self.ema is not None:
            self.ema.requires_grad_(False)  # not trained: out of the optimiser and of DDP

    @classmethod
    def settings_of(cls, cfg: Any) -> Any:
        """This method's settings in `cfg`: its section, or `cfg` itself when the config is an
        instance of them (a fine-tuning run's config holds the supervised recipe at its top)."""
        if cls.Settings is None:
            return None
        if isinstance(cfg, cls.Settings):
            return cfg
        return getattr(cfg, cls.settings_key)

    @classmethod
    def resolve(cls, cfg: Any, device: torch.device) -> None:
        """Fill this method's "auto" settings for a run on `device` (before config.yaml)."""

    @classmethod
    def describe(cls, cfg: Any) -> str:
        """This method's recipe in a few words, for reports."""
        return ""

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
        return self.evaluated_backbone()

    def evaluated_backbone(self) -> nn.Module:
        """The backbone evaluation and export use: its weights' moving average with ema > 0,
        else the trained weights."""
        return self.backbone if self.ema is None else self.ema.module

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """After optimiser step `step` (1-based)."""
        if self.ema is not None:
            self.ema.update(self.backbone, step=step)

    @classmethod
    def build_views(cls, cfg: Any):
        """The batched augmentation that turns a uint8 batch into this method's inputs."""
        local_size = cfg.aug.local_size or cfg.img_size
        return MultiCrop(cfg.aug, cfg.img_size, local_size, cfg.data.mean, cfg.data.std)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook before each epoch (0-based), also after a resume."""

    def on_train_start(self, images: torch.Tensor) -> None:
        """Hook before the first step of a new (not resumed) run, with every cached image."""

    def weight_decay_at(self, progress: float) -> float | None:
        """A weight-decay schedule over training (0..1) for the groups marked "decay"; None
        keeps each group's own, fixed weight decay."""
        return None

    def before_optimizer_step(self) -> None:
        """Hook between backward (gradients final, unscaled) and the optimiser step."""

    def on_step_end(self, epoch_progress: float) -> None:
        """Hook after each optimiser step (momentum teachers update here)."""
