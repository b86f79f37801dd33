"""The settings of every method: a dataclass per config section (`idmm.*`, `contrastive.*`,
`dino.*`, `supervised.*`), free of torch so that building and checking a config, `idmm keys` and
`--help` start in a fraction of a second (the methods themselves import torch and timm).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IDMMConfig:
    """The `idmm.*` settings."""

    cutmix_alpha: float = 0.5  # CutMix lambda ~ Beta(alpha, alpha); 0 = off
    cutmix_p: float = 1.0  # the paper mixes every batch
    label_smoothing: float = 0.1  # label smoothing of the N-way instance targets
    head_lr_scale: float = 1.0  # lr multiplier of the N-way instance head
    # "random" (the paper: trunc-normal rows) or "imprint": row i starts as image i's own
    # feature, scaled so logits start as cosine similarities / imprint_temperature.
    head_init: str = "random"  # random | imprint (row i starts as image i's feature)
    imprint_temperature: float = 0.1  # head_init=imprint: logits start as cosine / this
    # Under torchrun: each process holds N/K rows of the head and the softmax is computed across
    # processes (for large N, e.g. ImageNet's 1.28M instances); results equal the replicated head.
    shard_head: bool = False  # shard the N-way instance head across DDP processes
    head: str = "linear"  # linear (the paper) | cosine (unit rows and features / temperature)
    temperature: float = 0.1  # head=cosine: logits are cosine similarities / this
    projector: int = 0  # hidden width of an MLP between backbone and head; 0 = none (the paper)
    local_weight: float = 1.0  # weight of the local crops' loss (the paper: 1, a plain sum)

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("head", self.head in ("linear", "cosine"), "linear or cosine"),
            (
                "head",
                not (self.head == "cosine" and self.shard_head),
                "linear when shard_head=true (the sharded head is a linear one)",
            ),
            ("temperature", self.temperature > 0, "positive"),
            ("projector", self.projector >= 0, "0 (none) or a hidden width"),
            ("local_weight", self.local_weight >= 0, "0 or more"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("cutmix_p", 0 <= self.cutmix_p <= 1, "in [0, 1]"),
            ("imprint_temperature", self.imprint_temperature > 0, "positive"),
            ("head_init", self.head_init in ("random", "imprint"), "random or imprint"),
        ]


@dataclass
class ContrastiveConfig:
    """The `contrastive.*` settings of SimCLR and SupCon: one multi-positive InfoNCE loss on
    projected, L2-normalised features."""

    temperature: float = 0.2  # softmax temperature of the InfoNCE loss
    proj_hidden_dim: int = 512  # projection MLP: Linear, ReLU, Linear (no BatchNorm: with
    proj_dim: int = 128  # several processes it would make K x B differ from 1 x K*B)

    def problems(self) -> list[tuple[str, bool, str]]:
        return [("temperature", self.temperature > 0, "positive")]


@dataclass
class DINOConfig:
    """The `dino.*` settings: DINO (Caron et al. 2021) as the paper's baseline, teacher
    temperature 0.04, momentum 0.996; its crops (112 px, globals (0.4, 1), 2 locals) are in
    configs/paper/*dino*.yaml."""

    out_dim: int | None = None  # prototypes; None = 65536 on CUDA (the paper's), 4096 on CPU
    hidden_dim: int = 2048  # width of the head's 3-layer MLP
    bottleneck_dim: int = 256  # L2-normalised bottleneck before the prototypes
    student_temp: float = 0.1  # softmax temperature of the student
    teacher_temp: float = 0.04  # softmax temperature of the teacher (after warm-up)
    warmup_teacher_temp: float = 0.04  # linear warm-up of the teacher temperature from this
    warmup_teacher_temp_epochs: int = 0  # ... over this many epochs
    center_momentum: float = 0.9  # EMA momentum of the centre of the teacher's outputs
    momentum_teacher: float = 0.996  # EMA momentum, raised to 1 on a cosine over training
    # DINO's optimiser: weight decay on weights (not biases and norms) from weight_decay to
    # weight_decay_end on a cosine; each parameter's gradient norm clipped at clip_grad; the
    # prototypes (last layer) frozen for the first freeze_last_layer epochs.
    weight_decay: float = 0.04  # weight decay at the start of training
    weight_decay_end: float = 0.4  # weight decay at the end of training
    clip_grad: float = 3.0  # 0 = off
    freeze_last_layer: int = 1  # epochs with the prototypes frozen

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("student_temp", self.student_temp > 0, "positive"),
            ("teacher_temp", self.teacher_temp > 0, "positive"),
            ("warmup_teacher_temp", self.warmup_teacher_temp > 0, "positive"),
            ("momentum_teacher", 0 <= self.momentum_teacher <= 1, "in [0, 1]"),
            ("center_momentum", 0 <= self.center_momentum <= 1, "in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("weight_decay_end", self.weight_decay_end >= 0, "0 or more"),
            ("clip_grad", self.clip_grad >= 0, "0 (off) or more"),
            ("freeze_last_layer", self.freeze_last_layer >= 0, "0 (off) or more"),
        ]


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


# config section -> its settings (SimCLR and SupCon share `contrastive`)
SETTINGS: dict[str, type] = {
    "idmm": IDMMConfig,
    "contrastive": ContrastiveConfig,
    "dino": DINOConfig,
    "supervised": SupervisedConfig,
}
# the `method=` values, in the order tables list them (each module registers its class)
METHOD_NAMES = ("idmm", "simclr", "supcon", "dino", "supervised")
