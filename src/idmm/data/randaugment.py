"""Batched, per-sample RandAugment on the training device (timm's `rand-m9-mstd0.5-inc1`).

For each of `num_ops` slots every sample draws one op uniformly from `ops` and its own magnitude
m ~ N(magnitude, magnitude_std) clipped to [0, 10]; signed ops also draw a random sign. Ops follow
timm's `_RAND_INCREASING_TRANSFORMS` (stronger with m), plus torchvision's "Identity". Each op runs
once per slot on the subset of samples that drew it; the geometric ops of a slot share a single
`grid_sample` with per-sample affine maps. All randomness comes from the explicit generator and
its consumption does not depend on the data, so a run is reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from idmm.data.augment import _bernoulli, _gray, _randn, _uniform

OPS = (
    "Identity", "AutoContrast", "Equalize", "Rotate", "ShearX", "ShearY", "TranslateX",
    "TranslateY", "Brightness", "Color", "Contrast", "Sharpness", "Solarize", "Posterize",
)  # fmt: skip
# Strength at m = 10 of the geometric ops: degrees, shear factor, fraction of the image size.
_GEOMETRIC = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 0.45, "TranslateY": 0.45}
_SHARPEN = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13


def _col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, 1, 1, 1), x's dtype
    return t.to(x.dtype).view(-1, 1, 1, 1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> uint8 levels (int64): floor(x * 255), robust to k/255 rounding (as torchvision)."""
    return (x * (256 - 1e-3)).long().clamp_(0, 255)


# ---- per-op helpers: x (n, C, H, W) in [0, 1], per-sample strengths of shape (n,) ----


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance / torchvision _blend: b + f * (a - b), clipped."""
    return (b + _col(f, a) * (a - b)).clamp(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _col(f, x)).clamp(0, 1)


def _color(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f)


def _sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3-smoothed copy whose one-pixel border is the original (as torchvision)."""
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = _SHARPEN.to(x.device, x.dtype).view(1, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x.reshape(n * c, 1, h, w), k).view(n, c, h - 2, w - 2)
    return _blend(x, smooth, f)


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _col(threshold, x), 1 - x, x)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` most significant bits of each uint8 level (bits: (n,) integers)."""
    shift = (8 - bits.long()).view(-1, 1, 1, 1)
    return ((_levels(x) >> shift) << shift).to(x.dtype) / 255


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each sample to [0, 1]; constant channels are left as they are."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).masked_fill(flat, 1))
    return ((x - lo.masked_fill(flat, 0)) * scale).clamp(0, 1)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation on 256 levels, per sample and channel, all in one go."""
    q = _levels(x).flatten(2)  # (n, C, HW)
    hist = torch.zeros(*q.shape[:2], 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(2, q, hist.new_ones(1).expand_as(q))
    cum = hist.cumsum(2, dtype=torch.int32)
    last = cum.argmax(2, keepdim=True)  # the highest level present
    step = (q.shape[2] - hist.gather(2, last)).div(255, rounding_mode="floor")
    lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], 2)
    y = lut.gather(2, q).view_as(x).to(x.dtype) / 255
    return torch.where((step > 0).unsqueeze(-1), y, x)  # PIL leaves near-constant channels


def _affine(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Resample x with per-sample maps (n, 2, 3) from output to input pixel coordinates.

    Coordinates have their origin at the image centre, y down, pixel edges at +-W/2 and +-H/2.
    Bilinear interpolation, zero fill outside the image (as torchvision's default fill).
    """
    n, c, h, w = x.shape
    d = torch.tensor([w / 2, h / 2], device=x.device, dtype=x.dtype)
    theta = mat.to(x.dtype) / d.view(1, 2, 1)  # D^-1 [A | t] ...
    theta[:, :, :2] = theta[:, :, :2] * d.view(1, 1, 2)  # ... [D^-1 A D | D^-1 t]
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometry(name: str, s: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Output -> input maps (n, 2, 3) for op `name` with signed strength s (degrees, shear
    factor, or translation in pixels).

    Rotate turns counter-clockwise about the centre (PIL's rotate); shears are about the top-left
    corner as in PIL/timm (x_in = x + s * y_from_top); translations move the content by +s pixels.
    """
    mat = torch.zeros(s.shape[0], 2, 3, device=s.device, dtype=s.dtype)
    mat[:, 0, 0] = mat[:, 1, 1] = 1
    if name == "Rotate":
        a = s * (math.pi / 180)
        mat[:, 0, 0], mat[:, 0, 1] = torch.cos(a), -torch.sin(a)
        mat[:, 1, 0], mat[:, 1, 1] = torch.sin(a), torch.cos(a)
    elif name == "ShearX":
        mat[:, 0, 1], mat[:, 0, 2] = s, s * (h / 2)
    elif name == "ShearY":
        mat[:, 1, 0], mat[:, 1, 2] = s, s * (w / 2)
    elif name == "TranslateX":
        mat[:, 0, 2] = -s
    elif name == "TranslateY":
        mat[:, 1, 2] = -s
    return mat  # any other name: the identity


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    return _affine(x, _geometry("Rotate", degrees, *x.shape[-2:]))


def _shear_x(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _affine(x, _geometry("ShearX", s, *x.shape[-2:]))


def _shear_y(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _affine(x, _geometry("ShearY", s, *x.shape[-2:]))


def _translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Move the content by (tx, ty) pixels (n,) each."""
    mat = _geometry("TranslateX", tx, *x.shape[-2:])
    mat[:, 1, 2] = -ty
    return _affine(x, mat)


def _pointwise(name: str, x: torch.Tensor, m: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Non-geometric op `name` at magnitude m / 10 (m) and signed magnitude (level), per sample."""
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return _equalize(x)
    if name == "Solarize":
        return _solarize(x, 1 - m)
    if name == "Posterize":
        return _posterize(x, (4 - torch.floor(m * 4)).clamp(min=1))
    enhance = {"Brightness": _brightness, "Color": _color, "Contrast": _contrast}
    return enhance.get(name, _sharpness)(x, 1 + 0.9 * level)


def rand_augment(
    x: torch.Tensor,
    g: torch.Generator,
    num_ops: int = 2,
    magnitude: float | tuple[float, float] = 9.0,
    magnitude_std: float = 0.5,
    ops: tuple[str, ...] = OPS,
    p: float = 1.0,
) -> torch.Tensor:
    """Per-sample RandAugment of a float batch (B, C, H, W) in [0, 1].

    `magnitude` as a (lo, hi) pair draws m ~ U(lo, hi) per sample instead (the UDA RandAugment
    of the paper's fine-tuning code: magnitude 1-9, each op applied with p = 0.5).
    Returns a new tensor (x itself when num_ops is 0); x is never modified in place.
    """
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ValueError(f"unknown RandAugment op(s) {bad}; valid ops: {OPS}")
    if not ops:
        raise ValueError(f"ops must name at least one of {OPS}")
    if num_ops <= 0 or x.shape[0] == 0:
        return x
    b, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    x = x.clone()
    for _ in range(num_ops):
        # Same draws whatever the data, in the same order: the stream stays in step.
        k = (_uniform(b, 0, len(ops), g, dev).long()).clamp_(max=len(ops) - 1)
        if isinstance(magnitude, (tuple, list)):
            m = _uniform(b, magnitude[0], magnitude[1], g, dev).clamp(0, 10) / 10
        else:
            m = magnitude + magnitude_std * _randn(b, g, dev)
            m = m.clamp(0, 10) / 10
        level = m * torch.where(_bernoulli(b, 0.5, g, dev), -1.0, 1.0)
        if p < 1.0:  # a skipped op is the identity (index len(ops) matches no op)
            k = torch.where(_bernoulli(b, p, g, dev), k, len(ops))
        geo = torch.zeros(b, dtype=torch.bool, device=dev)
        mat = _geometry("Identity", level, h, w)
        for i, name in enumerate(ops):
            if name in _GEOMETRIC:
                sel = k == i
                s = level * _GEOMETRIC[name] * {"TranslateX": w, "TranslateY": h}.get(name, 1)
                mat = torch.where(sel.view(-1, 1, 1), _geometry(name, s, h, w), mat)
                geo |= sel
        groups = [(n, k == i) for i, n in enumerate(ops) if n not in _GEOMETRIC and n != "Identity"]
        for name, sel in [*groups, ("geometric", geo)]:
            ids = sel.nonzero().squeeze(1)
            if ids.numel() == 0:
                continue
            if name == "geometric":
                x[ids] = _affine(x[ids], mat[ids])
            else:
                x[ids] = _pointwise(name, x[ids], m[ids], level[ids])
    return x
