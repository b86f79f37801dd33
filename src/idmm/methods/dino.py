"""DINO (Caron et al. 2021), the paper's self-distillation baseline.

A student (backbone + head) sees every crop; a teacher, the student's exponential moving average,
sees the global crops. The student matches the teacher's sharpened (low temperature), centred
output distribution over `dino.out_dim` prototypes, for every pair of a teacher crop and a
different student crop. Centring (subtracting a running mean of the teacher's outputs) and
sharpening together keep the outputs from collapsing to one prototype or to uniform. The teacher
is updated as an exponential moving average of the student's parameters *and* BatchNorm statistics.
As the paper's DINO baseline (and because the teacher of a short run still holds much of its random
initialisation), the student is what `backbone.safetensors` holds and what fine-tuning starts from.
The optimiser is DINO's: weight decay 0.04 -> 0.4 on weights only, per-parameter gradient clipping
at 3.0, prototypes frozen for the first epoch, teacher-temperature warm-up (dino.warmup_*).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import all_reduce_sum, rank_and_world
from .base import Method, register
from .settings import DINOConfig


class DINOHead(nn.Module):
    """3-layer MLP, L2-normalised bottleneck, then prototypes with unit-norm weights (DINO's
    weight-normalised last layer with its gain fixed at 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )  # fmt: skip
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck_dim) * 0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's init: small weights, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))


@register
class DINO(Method):
    name, display_name, settings_key, Settings = "dino", "DINO", "dino", DINOConfig

    @classmethod
    def resolve(cls, cfg, device):
        if cfg.dino.out_dim is None:
            cfg.dino.out_dim = 65536 if device.type == "cuda" else 4096  # the paper's on a GPU

    @classmethod
    def describe(cls, cfg):
        d = cfg.dino
        return f"{d.out_dim} prototypes, teacher temperature {d.teacher_temp}"

    def __init__(self, cfg, backbone, num_images, num_classes, views):
        super().__init__(cfg, backbone, num_images, num_classes, views)
        c = self.settings
        dim = c.out_dim or 4096  # resolved (65536 on CUDA) before a run; 4096 in bare tests
        self.head = DINOHead(backbone.num_features, dim, c.hidden_dim, c.bottleneck_dim)
        self.teacher = copy.deepcopy(nn.ModuleDict({"backbone": backbone, "head": self.head}))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        for m in self.teacher.modules():  # the teacher has no stochastic depth (DINO's)
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        self.register_buffer("center", torch.zeros(1, dim))
        self.epoch = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def param_groups(self, lr, weight_decay):
        # DINO regularises weights only: no decay on biases and norms (1-D parameters)
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]
        wd = self.settings.weight_decay
        return [{"params": decay, "lr_scale": 1.0, "weight_decay": wd, "decay": True},
                {"params": rest, "lr_scale": 1.0, "weight_decay": 0.0, "decay": False}]  # fmt: skip

    def weight_decay_at(self, progress: float) -> float | None:
        c = self.settings
        return c.weight_decay_end + (c.weight_decay - c.weight_decay_end) * (
            1 + math.cos(math.pi * progress)) / 2  # fmt: skip

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        c = self.settings
        if c.clip_grad:  # each parameter's gradient on its own, as DINO's clip_gradients
            for p in self.parameters():
                if p.grad is not None:
                    norm = p.grad.norm()
                    p.grad.mul_(torch.clamp(c.clip_grad / (norm + 1e-6), max=1.0))
        if self.epoch < c.freeze_last_layer:
            self.head.prototypes.grad = None  # AdamW leaves a parameter without gradient alone

    def teacher_temp(self) -> float:
        c = self.settings
        if self.epoch >= c.warmup_teacher_temp_epochs:
            return c.teacher_temp
        t = self.epoch / c.warmup_teacher_temp_epochs
        return c.warmup_teacher_temp + t * (c.teacher_temp - c.warmup_teacher_temp)

    @torch.no_grad()
    def prepare(self, images, indices, labels, rng, g):
        return self.views(images, g)

    def forward(self, crops: list[torch.Tensor]):
        c = self.settings
        n_global = self.views.groups[0].count
        student = torch.cat([self.head(self.backbone(x)) for x in crops]).float()
        student = F.log_softmax(student / c.student_temp, dim=-1)
        per_crop = student.chunk(sum(spec.count for spec in self.views.groups))
        with torch.no_grad():
            t = self.teacher["head"](self.teacher["backbone"](crops[0])).float()
            targets = F.softmax((t - self.center) / self.teacher_temp(), dim=-1).chunk(n_global)
        loss, pairs = 0.0, 0
        for i, q in enumerate(targets):
            for v, s in enumerate(per_crop):
                if v != i:  # never the same view in both
                    loss = loss - (q * s).sum(-1).mean()
                    pairs += 1
        self.update_center(t)
        return loss / pairs, {}

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        world = rank_and_world()[1]
        batch_center = all_reduce_sum(teacher_out.sum(0, keepdim=True)) / (len(teacher_out) * world)
        m = self.settings.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1 - m)

    @torch.no_grad()
    def on_step_end(self, epoch_progress: float) -> None:
        # momentum from momentum_teacher to 1 on a half cosine over training, as DINO
        m0 = self.settings.momentum_teacher
        m = 1 - (1 - m0) * (math.cos(math.pi * epoch_progress) + 1) / 2
        student = [*self.backbone.parameters(), *self.head.parameters()]
        for ps, pt in zip(student, self.teacher.parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)
        # BatchNorm statistics (the conv stem's, a CNN's) follow the same average; counters copy
        for bs, bt in zip([*self.backbone.buffers(), *self.head.buffers()], self.teacher.buffers()):
            if bt.dtype.is_floating_point:
                bt.mul_(m).add_(bs, alpha=1 - m)
            else:
                bt.copy_(bs)
