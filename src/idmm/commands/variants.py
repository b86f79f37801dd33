"""Named variants of a recipe that `idmm compare` runs as rows beside the methods: the
paper-faithful IDMM, the steps of the paper's ablation (its Table 8) for `idmm ablate`, and the
levers issue 17 screens (`LEVERS`: `idmm compare methods=idmm,idmm-cosine,... budget=5m`).

A variant is a method plus overrides computed from the recipe it is compared within, so
"the paper's crops at this recipe's resolution" means the same on any dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Variant:
    method: str  # a registered method, or "scratch" (a classifier from random weights)
    label: str  # its row in tables
    overrides: Callable[[Any], dict]  # recipe -> key=value overrides


def _paper(cfg) -> dict:
    """The paper's IDMM (its official code) at the recipe's pre-training resolution: a random
    (trunc-normal) head, its crop scales with every crop at one size, its colour jitter."""
    return {"idmm.head_init": "random", "aug.global_scale": (0.14, 1.0),
            "aug.local_scale": (0.05, 0.4), "aug.local_size": cfg.img_size,
            "aug.global_crops": 2, "aug.local_crops": 4,
            "aug.color_jitter": (0.8, 0.8, 0.8, 0.2), "idmm.label_smoothing": 0.1,
            "idmm.cutmix_alpha": 0.5, "idmm.cutmix_p": 1.0}  # fmt: skip


def _full_size(cfg) -> int:
    """'Without small resolution': pre-training at the fine-tuning size (the paper: 224)."""
    return cfg.finetune.img_size or cfg.img_size


def _plain(cfg) -> dict:
    size = _full_size(cfg)
    return {**_paper(cfg), "idmm.label_smoothing": 0.0, "idmm.cutmix_alpha": 0.0,
            "aug.local_crops": 0, "img_size": size, "aug.local_size": size}  # fmt: skip


def _plus_ls(cfg) -> dict:
    return {**_plain(cfg), "idmm.label_smoothing": 0.1}


def _plus_small(cfg) -> dict:
    return {**_plus_ls(cfg), "img_size": cfg.img_size, "aug.local_size": cfg.img_size}


def _plus_multicrop(cfg) -> dict:
    return {**_plus_small(cfg), "aug.local_crops": 4}


VARIANTS: dict[str, Variant] = {
    "idmm-paper": Variant("idmm", "IDMM (paper-faithful)", _paper),
    # the scratch baseline's recipe on a ResNet-style CNN of the CPU ViT's size (0.9M parameters)
    "cnn": Variant("scratch", "CNN (resnet_cpu_small)", lambda cfg: {"model": "resnet_cpu_small"}),
    "ablate-plain": Variant("idmm", "instance discrimination", _plain),
    "ablate+ls": Variant("idmm", "+ label smoothing", _plus_ls),
    "ablate+smallres": Variant("idmm", "+ small resolution", _plus_small),
    "ablate+multicrop": Variant("idmm", "+ multi-crop", _plus_multicrop),
    "ablate+cutmix": Variant("idmm", "+ CutMix (= IDMM, paper-faithful)", _paper),
    # levers on the recipe's IDMM, one change each (hypotheses of issue 17)
    "idmm-cosine": Variant(
        "idmm", "IDMM, cosine head (T 0.1)", lambda cfg: {"idmm.head": "cosine"}
    ),
    "idmm-proj": Variant("idmm", "IDMM, projection MLP (512)", lambda cfg: {"idmm.projector": 512}),
    "idmm-headlr": Variant("idmm", "IDMM, head lr x10", lambda cfg: {"idmm.head_lr_scale": 10.0}),
    "idmm-nomix": Variant(
        "idmm",
        "IDMM, no CutMix, no label smoothing",
        lambda cfg: {"idmm.cutmix_alpha": 0.0, "idmm.label_smoothing": 0.0},
    ),
    "idmm-local0.5": Variant(
        "idmm", "IDMM, local loss x0.5", lambda cfg: {"idmm.local_weight": 0.5}
    ),
    "idmm-nolocal": Variant("idmm", "IDMM, no local crops", lambda cfg: {"aug.local_crops": 0}),
    "idmm-localfull": Variant(
        "idmm", "IDMM, local crops at the global size", lambda cfg: {"aug.local_size": cfg.img_size}
    ),
    "simclr-2crops": Variant("simclr", "SimCLR, 2 crops", lambda cfg: {"aug.local_crops": 0}),
    # locality and pooling (idmm.locality; the models replace the recipe's vit_cpu_small_conv)
    "idmm-gap": Variant(
        "idmm", "IDMM, average pooling", lambda cfg: {"model": "vit_cpu_small_conv_gap"}
    ),
    "idmm-lsa": Variant(
        "idmm", "IDMM, locality self-attention", lambda cfg: {"model": "vit_cpu_small_conv_lsa"}
    ),
    "idmm-rpb": Variant(
        "idmm", "IDMM, relative position bias", lambda cfg: {"model": "vit_cpu_small_conv_rpb"}
    ),
    "idmm-spt-lsa": Variant(
        "idmm", "IDMM, SPT + LSA (no conv stem)", lambda cfg: {"model": "vit_cpu_small_spt_lsa"}
    ),
    # progressive resolution at equal epochs (not with budget=): the global crops at half the
    # recipe's size (a multiple of 4, the CPU ViTs' patch) for the first half of pre-training
    "idmm-progressive": Variant(
        "idmm",
        "IDMM, half-size global crops for the first half",
        lambda cfg: {"aug.progressive_from": max(4, cfg.img_size // 2 // 4 * 4)},
    ),
    # a moving average of the weights in both stages, what evaluation and export use
    "idmm-ema": Variant(
        "idmm", "IDMM, weight EMA (0.999)", lambda cfg: {"ema": 0.999, "finetune.ema": 0.999}
    ),
    # fine-tuning that moves the pre-trained lower blocks less than the top and the head
    "idmm-llrd": Variant(
        "idmm", "IDMM, layer-wise lr decay 0.75", lambda cfg: {"finetune.layer_decay": 0.75}
    ),
    # speed: more epochs in the same minutes if compiling (~30 s per crop size) pays for itself
    "idmm-compile": Variant("idmm", "IDMM, torch.compile", lambda cfg: {"compile": True}),
}
LEVERS = (
    "idmm-cosine",
    "idmm-proj",
    "idmm-headlr",
    "idmm-nomix",
    "idmm-local0.5",
    "idmm-nolocal",
    "idmm-localfull",
    "simclr-2crops",
    "idmm-gap",
    "idmm-lsa",
    "idmm-rpb",
    "idmm-spt-lsa",
    "idmm-progressive",
    "idmm-ema",
    "idmm-compile",
    "idmm-llrd",
)

# The paper's Table 8 (Flowers-102, DeiT-Tiny), the numbers `idmm ablate` prints beside ours.
ABLATION = ("ablate-plain", "ablate+ls", "ablate+smallres", "ablate+multicrop", "ablate+cutmix")
PAPER_TABLE8 = dict(zip(ABLATION, (0.696, 0.704, 0.731, 0.769, 0.799)))
