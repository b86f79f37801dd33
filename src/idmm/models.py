"""Backbones: every model is a timm model, built by name for the pre-training image size.

CPU presets are timm architectures with changed keyword arguments (a small patch so that 28-32 px
images still give a 7x7 token grid, as DeiT-Tiny at 112 px does), so they export, load and
fine-tune exactly like any other timm model.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from timm.layers import HybridEmbed, resample_abs_pos_embed
from torch import nn

from .config_types import ConfigError
from .engine.checkpoint import atomic_write
from .locality import LocalitySelfAttention, RelativePositionAttention, ShiftedPatchEmbed


class ConvStem(HybridEmbed):
    """Three 3x3 convolutions (stride 1, 2, 2; BatchNorm, ReLU) and a 1x1 projection in place of
    a ViT's 4x4 patchify: the "early convolutions" of Xiao et al. (2021). Same token grid (image
    size / 4), ~0.1M more parameters; the locality prior a ViT lacks on a few thousand images
    (FMNIST-2040, 60 + 30 epochs: 84.9% against 79.1% with the patchify stem)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=128, widths=(32, 64, 128),
                 **kwargs):  # fmt: skip
        stride = 2 ** (len(widths) - 1)
        if patch_size not in (stride, (stride, stride)):
            raise ConfigError(f"ConvStem with {len(widths)} convolutions has stride {stride}; "
                              f"the model asks for patch_size={patch_size}")  # fmt: skip
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        # the stem's stride is the ViT's patch size, so the projection on its map is 1x1
        super().__init__(nn.Sequential(*layers), img_size=img_size, patch_size=1,
                         in_chans=in_chans, embed_dim=embed_dim, **kwargs)  # fmt: skip


# name -> (timm architecture, keyword arguments)
_SMALL = dict(patch_size=4, embed_dim=128, depth=4, num_heads=2)  # the CPU ViTs' shape
PRESETS: dict[str, tuple[str, dict]] = {
    # 2.7M parameters; a 7x7 token grid at 28 px. ~25 s per FMNIST-2040 IDMM epoch on 2 cores.
    "vit_cpu": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=192, depth=6, num_heads=3)),
    # 0.8M parameters; ~10 s per FMNIST-2040 IDMM epoch on 2 cores. The Fashion-MNIST default.
    "vit_cpu_small": ("vit_tiny_patch16_224", dict(_SMALL)),
    # 0.9M parameters: vit_cpu_small with a convolutional stem (ConvStem); ~1.3x the time per
    # epoch, and the CPU recipe's model (configs/cpu/fmnist2040.yaml).
    "vit_cpu_small_conv": ("vit_tiny_patch16_224", dict(_SMALL, embed_layer=ConvStem)),
    # Issue 17's locality and pooling levers on the CPU recipe's ViT (idmm.locality):
    # global average pooling of the patch tokens instead of a class token
    "vit_cpu_small_conv_gap": (
        "vit_tiny_patch16_224",
        dict(_SMALL, embed_layer=ConvStem, class_token=False, global_pool="avg"),
    ),
    # locality self-attention (learned temperature, no attention to itself) after the conv stem
    "vit_cpu_small_conv_lsa": (
        "vit_tiny_patch16_224",
        dict(_SMALL, embed_layer=ConvStem, attn_layer=LocalitySelfAttention),
    ),
    # a learned relative position bias per head in every block (beside the absolute embedding)
    "vit_cpu_small_conv_rpb": (
        "vit_tiny_patch16_224",
        dict(_SMALL, embed_layer=ConvStem, attn_layer=RelativePositionAttention),
    ),
    # "Vision Transformer for Small-Size Datasets": shifted patch tokens and LSA, no conv stem
    "vit_cpu_small_spt_lsa": (
        "vit_tiny_patch16_224",
        dict(_SMALL, embed_layer=ShiftedPatchEmbed, attn_layer=LocalitySelfAttention),
    ),
    # 0.9M parameters: the small-CNN reference (ResNet-style, 1 block per stage, output stride 8
    # so a 28-px image keeps a 4x4 map): what a ViT of the same size is measured against.
    "resnet_cpu_small": (
        "resnet18",
        dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 192), output_stride=8),
    ),
    # 0.06M parameters: unit tests only.
    "vit_test": ("vit_tiny_patch16_224", dict(patch_size=4, embed_dim=48, depth=2, num_heads=2)),
}

# Small, low-resolution datasets get the CPU preset at their native size by default (idmm.auto).
# (8x8 digits are upsampled to 16 px: a 4x4 token grid at patch 4)
SMALL_DATASETS = {"fashion-mnist": 28, "fmnist-2040": 28, "sklearn-digits": 16}


def create_backbone(
    name: str,
    img_size: int,
    drop_path: float = 0.0,
    dynamic_img_size: bool = False,
    num_classes: int = 0,
) -> nn.Module:
    """A timm model; with num_classes=0 (a backbone) `model(x)` is the pooled feature."""
    arch, kwargs = PRESETS.get(name, (name, {}))
    if name not in PRESETS and arch not in timm.list_models():
        close = _close_model_names(name)
        raise ConfigError(
            f"unknown model '{name}': not a timm model nor an idmm preset "
            f"({', '.join(PRESETS)}). Close names: {', '.join(close) or 'none'}"
        )
    kwargs = dict(kwargs, num_classes=num_classes, drop_path_rate=drop_path, img_size=img_size)
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True  # local crops at another resolution
    try:
        try:
            return timm.create_model(arch, pretrained=False, **kwargs)
        except TypeError as e:
            # Convolutional and hierarchical models (ResNet, PVTv2) take any input size and have
            # no img_size argument.
            if "img_size" not in str(e):
                raise
            kwargs.pop("img_size")
            kwargs.pop("dynamic_img_size", None)
            return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"cannot build model '{name}' at img_size={img_size}: {e}") from e


def _close_model_names(name: str, n: int = 5) -> list[str]:
    """Model names whose beginning is close to `name` (so "deit_tinny" finds deit_tiny_*)."""
    names = [*PRESETS, *timm.list_models()]
    heads = {m[: len(name)] for m in names}
    close = difflib.get_close_matches(name, heads, n=3, cutoff=0.7)
    return [m for m in names if m[: len(name)] in close][:n]


def set_fused_attention(model: nn.Module, enabled: bool) -> None:
    """Choose timm's fused attention (scaled_dot_product_attention) or its plain-matmul path.

    On CPUs, the fused kernel's backward for short sequences (50 tokens) took a third of a ViT
    training step here; the plain path made the step 1.3x faster. On GPUs the fused kernel wins.
    """
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enabled


def patch_size(model: nn.Module) -> int | None:
    """The patch size of a ViT-style (non-overlapping) patch embedding; None for CNNs and for
    overlapping patch embeddings (PVTv2), which take any image size."""
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    proj = getattr(pe, "proj", None)
    if ps is None or (isinstance(proj, nn.Conv2d) and proj.stride != proj.kernel_size):
        return None
    if isinstance(pe, HybridEmbed):
        return pe.feat_ratio()  # a stem's stride times its projection's
    return ps[0] if isinstance(ps, (tuple, list)) else ps


@torch.no_grad()
def check_input_sizes(model: nn.Module, name: str, *sizes: int | None) -> None:
    """One tiny forward per input size, so that an input the model cannot take (PVTv2's
    spatial-reduction convolutions need >= 32 px) fails here with a clear message."""
    was_training = model.training
    model.eval()
    try:
        for size in {s for s in sizes if s}:
            try:
                model(torch.zeros(1, 3, size, size))
            except RuntimeError as e:
                raise ConfigError(
                    f"model {name} cannot take {size}-px images ({e}); use a larger img_size "
                    "(and aug.local_size, finetune.img_size), or a model for small images "
                    "(vit_cpu_small, resnet_cpu_small)"
                ) from e
    finally:
        model.train(was_training)


class PreLogits(nn.Module):
    """A timm classifier's head input (its `pre_logits` features): the representation of a
    supervised model, which `save_backbone` writes without the classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def save_backbone(model: nn.Module, path: str | Path, metadata: dict[str, str]) -> None:
    """Weights only, timm parameter names, written atomically."""
    if isinstance(model, PreLogits):
        drop = head_names(model.model)
        state = {k: v for k, v in model.model.state_dict().items() if k not in drop}
    else:
        state = model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    data = safetensors_bytes(state, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def head_names(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier, which a new task replaces."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {n for n, m in model.named_modules() if m is clf and n}
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load pre-trained weights into `model` for fine-tuning; returns the keys left at init.

    The classifier is kept only when its shape matches (a fine-tuned model continuing on the
    same classes, e.g. the second, higher-resolution stage); otherwise the model keeps its fresh
    head. An absolute position embedding of another grid is resized (bicubic, prefix tokens
    kept), so a backbone pre-trained at 112 px fine-tunes at 224. Any other mismatch (a
    relative-position table of another window size, another width) is an error naming the key.
    """
    state = load_file(str(path))
    own = model.state_dict()
    heads = head_names(model)
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if key.split(".")[-1] == "pos_embed":
                state[key] = resize_pos_embed(model, state[key])
            elif key in heads:
                del state[key]
            else:
                raise ConfigError(
                    f"{path}: weight '{key}' has shape {tuple(state[key].shape)}, the model "
                    f"wants {tuple(own[key].shape)}. Fine-tune the same architecture "
                    "(model=, and window_size for relative-position models) as pre-training"
                )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in heads]
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return [k for k in heads if k not in state]


def resize_pos_embed(model: nn.Module, posemb: torch.Tensor) -> torch.Tensor:
    """Bicubic resize of a (1, prefix + H*W, D) position embedding to the model's grid, without
    antialiasing: the official code's F.interpolate(mode="bicubic", align_corners=False)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ConfigError(
            f"cannot resize the position embedding of {type(model).__name__}: it has no "
            "patch grid; fine-tune at the pre-training img_size"
        )
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    return resample_abs_pos_embed(posemb, new_size=list(grid), num_prefix_tokens=prefix,
                                  antialias=False)  # fmt: skip


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trunc_normal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)
