"""`model=auto`, `img_size=auto`, `batch_size=auto`: choices from the data and the machine, each
logged with its reason, and the memory a run will need checked before it starts.

    GPU: the paper's DeiT-Tiny at its pre-training resolution, 112 px.
    CPU: the CPU recipe's ViT (vit_cpu_small_conv, 0.9M parameters) at 24 px for 2,040 images,
         larger for fewer, smaller for more (an epoch costs about the same), 16-48 px, never above
         the images' own size; local crops at half of it, as the CPU recipe's 16/8.
    Known small datasets (Fashion-MNIST, digits) keep their native size and the patchify preset.

Memory: the activations a training step keeps for its backward pass, per image and crop, from the
ViT's tokens, width, depth and heads (Korthikanti et al. 2022's count, with a factor measured
here for eager PyTorch; docs/benchmarks.md, *Memory*), plus the weights and the cached images.

`epochs=auto` (resolve_epochs): on a GPU 100 + 100 (the paper's fine-tuning; an eighth of its
800 pre-training epochs); on a CPU the CPU recipe's 60 + 30, scaled by how many pixels an epoch
has against the recipe's (2,040 images at 24 px), so the command takes about as long as the
recipe's ~7 minutes on 2 cores: more epochs for few images (up to twice), fewer for many (down to
a sixth). `budget=` sets the time instead.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from typing import Any

from PIL import Image

from .config import ConfigError
from .data.sources import dataset_key
from .engine.log import LOGGER
from .models import SMALL_DATASETS, patch_size

LOG = logging.getLogger(LOGGER)
GPU_MODEL, GPU_SIZE = "deit_tiny_patch16_224", 112
CPU_MODEL = "vit_cpu_small_conv"
CPU_IMAGES, CPU_SIDE = 2040, 24  # the size for 2,040 images; scaled to keep an epoch's pixels
GPU_EPOCHS, CPU_EPOCHS = (100, 100), (60, 30)  # pre-training, fine-tuning
CPU_SCALE = (1 / 6, 2.0)  # the least and most a CPU run's epochs are scaled by its pixels
# Decisions made while the config is built, before any run directory and its train.log exist:
# the first training stage logs them (builders.start_run).
PENDING: list[str] = []
_SAMPLE = 64  # images whose header is read to learn the data's size


def device_type(device: str) -> str:
    """'cuda' or 'cpu', as `device=` will resolve (auto: a GPU when there is one)."""
    if device != "auto":
        return "cuda" if device.startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_side(src) -> int | None:
    """The median shorter side of the images (a sample of their headers; no decoding)."""
    if src.array is not None:
        return int(min(src.array.shape[1:3]))
    step = max(1, len(src.items) // _SAMPLE)
    sides = []
    for path in src.items[::step][:_SAMPLE]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except Exception:  # a bad file is reported when the data is decoded
            continue
    return int(statistics.median(sides)) if sides else None


def cpu_size(n_images: int, side: int | None) -> int:
    """16-48 px, a multiple of 8 (local crops at half of it stay on the 4-px patch grid): 24 px
    for 2,040 images, the side scaled by sqrt(2040 / n) so that an epoch's pixels stay put."""
    size = CPU_SIDE * math.sqrt(CPU_IMAGES / max(1, n_images))
    if side:
        size = min(size, side)
    return int(min(48, max(16, size)) // 8 * 8)


def resolve_model(cfg: Any, training=None, log: bool = True) -> tuple[str, int, int | None]:
    """The model, image size and local-crop size (None: leave it) a run uses: `model=auto`,
    `img_size=auto` resolved; on a CPU an automatic size also sets unset local crops to half.
    `training`: a function giving the training Source, called only when its images matter."""
    model, size, source = cfg.model, cfg.img_size, cfg.data.source
    aug = getattr(cfg, "aug", None)
    local = None
    if model != "auto" and size is not None:
        return model, size, local
    small = SMALL_DATASETS.get(dataset_key(source))
    where = device_type(cfg.device)
    reasons = []
    if small:
        model = "vit_cpu_small" if model == "auto" else model
        size = small if size is None else size
        reasons.append(f"{source} is a known small dataset: its native {small} px")
    elif where == "cuda":
        model = GPU_MODEL if model == "auto" else model
        size = GPU_SIZE if size is None else size
        reasons.append("a GPU: the paper's DeiT-Tiny at its pre-training resolution")
    else:
        model = CPU_MODEL if model == "auto" else model
        if size is None:
            src = training() if training is not None else None
            side = native_side(src) if src is not None else None
            n = len(src) if src is not None else 2040
            size = cpu_size(n, side)
            if aug is not None and aug.local_size is None and aug.local_crops:
                local = size // 2
            crops = f", local crops at {local} px" if local else ""
            reasons.append(
                f"a CPU ({os.cpu_count()} cores): the CPU recipe's ViT; {n} images of ~{side} px "
                f"-> {size} px{crops}, an epoch about as long as the CPU recipe's on 2,040 images "
                "at 24 px (set img_size= for more detail, budget= to bound the time)"
            )
    if log:
        LOG.info(f"model=auto/img_size=auto -> {model} at {size} px: {'; '.join(reasons)}")
    return model, size, local


def resolve_epochs(cfg: Any, training) -> None:
    """`epochs=auto` and `finetune.epochs=auto` of a run config (None) set in place, the reason
    kept for the first stage's log (PENDING); `training` gives the training Source (asked for
    on a CPU only, once)."""
    if cfg.epochs is not None and cfg.finetune.epochs is not None:
        return
    if device_type(cfg.device) == "cuda":
        pre, ft = GPU_EPOCHS
        why = "a GPU: the paper's 100 fine-tuning epochs, as many pre-training"
    else:
        src = training()
        _, size, _ = resolve_model(cfg, lambda: src, log=False)
        n = len(src)
        low, high = CPU_SCALE
        scale = min(high, max(low, CPU_IMAGES * CPU_SIDE**2 / (max(1, n) * size**2)))
        pre, ft = (max(1, round(e * scale)) for e in CPU_EPOCHS)
        why = (
            f"a CPU: the CPU recipe's 60 + 30 x {scale:.2f}, its epoch's pixels (2,040 images at "
            f"24 px) over this one's ({n} at {size} px), so the run takes about as long as the "
            "recipe's (~7 min on 2 cores; budget= sets the time instead)"
        )
    given = []
    if cfg.epochs is None:
        cfg.epochs = pre
        given.append(f"epochs={pre}")
    if cfg.finetune.epochs is None:
        cfg.finetune.epochs = ft
        given.append(f"finetune.epochs={ft}")
    PENDING.append(f"epochs=auto -> {' '.join(given)}: {why}")


# -- memory --------------------------------------------------------------------------------------
# Measured here (docs/benchmarks.md, *Memory*): eager PyTorch keeps ~1.2x the count below in
# fp32 and ~1.4x its 2-byte size under bf16 autocast (some activations stay fp32).
EAGER_FACTOR = {4: 1.2, 2: 1.4}


def activation_bytes(model, size: int, bytes_per_value: int) -> float:
    """Per image and view: what one training step keeps for backward in a ViT (per block
    tokens x width x (34 + 5 x heads x tokens / width) values at 2 bytes, Korthikanti et al.),
    scaled to the precision and by the eager factor. 0 for models that are not ViTs."""
    blocks, patch = getattr(model, "blocks", None), patch_size(model)
    if blocks is None or patch is None:
        return 0.0
    tokens = (size // patch) ** 2 + getattr(model, "num_prefix_tokens", 1)
    width, heads = model.embed_dim, blocks[0].attn.num_heads
    per_block = tokens * width * (34 + 5 * heads * tokens / width) / 2 * bytes_per_value
    return EAGER_FACTOR[bytes_per_value] * len(blocks) * per_block


def available_bytes(device) -> float | None:
    """Free memory of the training device: the GPU's, else MemAvailable of this machine."""
    if device.type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(cfg: Any, model, views: list[tuple[int, int]], rt, auto_batch: bool) -> None:
    """Estimate a step's memory (views: (count, size) per crop group) before training; halve an
    automatic batch until it fits in 80% of what is free, or stop with what to change."""
    width = 2 if rt.precision in ("bf16", "fp16") else 4
    per_image = sum(n * activation_bytes(model, s, width) for n, s in views)
    weights = 16 * sum(p.numel() for p in model.parameters())  # + grads + 2 AdamW moments
    free = available_bytes(rt.device)
    if not per_image or free is None:
        return
    need = lambda b: weights + b * per_image  # noqa: E731
    batch = cfg.batch_size
    while auto_batch and batch > 1 and need(batch) > 0.8 * free:
        batch //= 2
    gb = 2**30
    if batch != cfg.batch_size:
        LOG.info(f"batch_size=auto -> {batch}: batch {cfg.batch_size} would need ~"
                 f"{need(cfg.batch_size) / gb:.1f} GB, {free / gb:.1f} GB is free")  # fmt: skip
        cfg.batch_size = batch
        return
    if need(batch) > 0.8 * free:
        fits = max(1, int((0.8 * free - weights) // per_image))
        raise ConfigError(
            f"batch_size={batch} needs ~{need(batch) / gb:.1f} GB for training, {free / gb:.1f} "
            f"GB is free on {rt.device}; use batch_size<={fits}, batch_size=auto, or a smaller "
            "img_size"
        )
    LOG.info(f"memory: ~{need(batch) / gb:.1f} GB for a training step at batch {batch} "
             f"({free / gb:.1f} GB free on {rt.device})")  # fmt: skip
