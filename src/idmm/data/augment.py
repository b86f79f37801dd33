"""Batched multi-crop augmentation on the training device.

Every operation works on a whole uint8 batch at once with per-sample random parameters drawn from
an explicit `torch.Generator`: no per-image PIL work, no DataLoader workers. On 2 CPU cores, worker
processes compete with the two compute threads; on a GPU, per-image PIL work cannot keep up with
tens of thousands of images per second. Crop, flip and resize are one `grid_sample` with a
per-sample affine transform; colour jitter, grayscale and blur are per-sample tensor arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config_types import ConfigError

# RGB -> luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class CropSpec:
    count: int
    size: int
    scale: tuple[float, float]


class ShardGenerator:
    """Per-sample random draws that do not depend on how the global batch is split over ranks.

    Rank r of K holds global samples r, r + K, r + 2K, ... (the trainer's strided shard). Every
    rank draws the numbers of the whole global batch from the same generator (a few floats per
    sample: cheap) and keeps its own column, so 2 ranks x batch B augment exactly as 1 process x
    batch 2B does; only the pixel work is sharded.
    """

    def __init__(self, generator: torch.Generator, world_size: int, rank: int):
        self.generator, self.world_size, self.rank = generator, world_size, rank
        self.device = generator.device


def _draw(fn, n: int, g, device) -> torch.Tensor:
    if isinstance(g, ShardGenerator):
        full = fn(n * g.world_size, generator=g.generator, device=device)
        return full.view(n, g.world_size)[:, g.rank].contiguous()
    return fn(n, generator=g, device=device)


def _rand(n: int, g, device) -> torch.Tensor:
    return _draw(torch.rand, n, g, device)


def _randn(n: int, g, device) -> torch.Tensor:
    return _draw(torch.randn, n, g, device)


def _uniform(n: int, lo: float, hi: float, g, device) -> torch.Tensor:
    return _rand(n, g, device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g, device) -> torch.Tensor:
    return _rand(n, g, device) < p


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    g: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Per-sample random-resized crop + horizontal flip of a float batch (B, C, H, W).

    Area fraction ~ U(scale) and log aspect ratio ~ U(log ratio) as in torchvision; a box that
    does not fit is shrunk to fit (torchvision retries, then falls back to a centre crop).
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, *scale, g, dev)
    logr = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the image side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (_rand(b, g, dev) * (1 - w) + w / 2) * 2 - 1
    cy = (_rand(b, g, dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(_bernoulli(b, flip_p, g, dev), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_matrix(h: torch.Tensor) -> torch.Tensor:
    """Per-sample 3x3 RGB matrices that rotate hue by h turns (a rotation in YIQ space)."""
    yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        device=h.device,
        dtype=h.dtype,
    )
    inv = torch.linalg.inv(yiq)
    c, s = torch.cos(2 * math.pi * h), torch.sin(2 * math.pi * h)
    rot = torch.zeros(h.shape[0], 3, 3, device=h.device, dtype=h.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = c, -s
    rot[:, 2, 1], rot[:, 2, 2] = s, c
    return inv @ rot @ yiq


def color_jitter(
    x: torch.Tensor,
    strength: tuple[float, float, float, float],
    p: float,
    g: torch.Generator,
) -> torch.Tensor:
    """Brightness, contrast, saturation, hue, each with per-sample factors, on p of the samples.

    Applied in a fixed order (torchvision shuffles it per image); the distribution of each factor
    is torchvision's. Samples not selected are returned unchanged.
    """
    b, dev = x.shape[0], x.device
    bri, con, sat, hue = strength
    on = _bernoulli(b, p, g, dev).view(b, 1, 1, 1)

    def factor(s: float) -> torch.Tensor:
        return _uniform(b, max(0.0, 1 - s), 1 + s, g, dev).view(b, 1, 1, 1)

    y = (x * factor(bri)).clamp(0, 1)
    m = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - m) * factor(con) + m).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * factor(sat) + gray).clamp(0, 1)
    if hue > 0:
        h = _uniform(b, -hue, hue, g, dev)
        y = torch.einsum("bij,bjhw->bihw", _hue_matrix(h), y).clamp(0, 1)
    return torch.where(on, y, x)


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    on = _bernoulli(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Per-sample separable Gaussian blur on p of the samples, sigma ~ U(sigma) in pixels."""
    b, c, h, w = x.shape
    dev = x.device
    on = _bernoulli(b, p, g, dev)
    s = _uniform(b, *sigma, g, dev)
    radius = max(1, min(int(math.ceil(3 * sigma[1])), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * s.view(-1, 1).to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, K)
    k = k.repeat_interleave(c, 0)  # one kernel per (sample, channel)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return torch.where(on.view(b, 1, 1, 1), y.view(b, c, h, w), x)


class MultiCrop:
    """Turns a uint8 batch (B, 3, H, W) into groups of normalised crops.

    Returns one tensor per crop group (global, then local when there are local crops), each of
    shape (count * B, 3, size, size), ordered crop-major: rows [k*B:(k+1)*B] are crop k of every
    image, so targets for a group are `indices.repeat(count)`.
    """

    def __init__(self, aug, global_size: int, local_size: int, mean, std):
        self.aug, self.global_size = aug, global_size
        start = aug.progressive_from
        if start is not None and start > global_size:
            raise ConfigError(
                f"aug.progressive_from={start} is above img_size={global_size}: "
                "progressive resolution grows the global crops up to img_size"
            )
        self.groups = [CropSpec(aug.global_crops, global_size, tuple(aug.global_scale))]
        if aug.local_crops > 0:
            self.groups.append(CropSpec(aug.local_crops, local_size, tuple(aug.local_scale)))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def at_progress(self, progress: float) -> int:
        """Progressive resolution: the global crops' size at this point of training (0..1), set
        and returned (img_size when off)."""
        start, full = self.aug.progressive_from, self.global_size
        size = full
        if start is not None:
            step = math.gcd(start, full)
            steps = (full - start) // step * min(1.0, progress / self.aug.progressive_until)
            size = start + int(steps + 1e-9) * step  # 1e-9: 0.7 * 10 is 6.99...
        self.groups[0].size = size
        return size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        x = images.float().div_(255)
        return [self.crops(x, spec, g) for spec in self.groups]

    def crops(self, x: torch.Tensor, spec: CropSpec, g: torch.Generator) -> torch.Tensor:
        a = self.aug
        xs = x.repeat(spec.count, 1, 1, 1)
        xs = random_resized_crop(xs, spec.size, spec.scale, g, flip_p=a.flip_p)
        xs = color_jitter(xs, tuple(a.color_jitter), a.color_jitter_p, g)
        xs = random_grayscale(xs, a.grayscale_p, g)
        rel = spec.size / 112  # blur_sigma is given for 112-px crops
        xs = gaussian_blur(xs, a.blur_p, (a.blur_sigma[0] * rel, a.blur_sigma[1] * rel), g)
        return normalize(xs, self.mean, self.std)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)


def eval_view(images: torch.Tensor, size: int, mean, std, crop: float = 1.0) -> torch.Tensor:
    """Deterministic view for features and evaluation: the cached image resized to
    size / crop, then the central size x size (crop=1: the whole image, resized)."""
    x = images.float().div_(255)
    full = int(round(size / crop))
    if x.shape[-1] != full:
        x = F.interpolate(
            x, size=(full, full), mode="bilinear", antialias=True, align_corners=False
        )
    if full != size:
        top = (full - size) // 2
        x = x[:, :, top : top + size, top : top + size]
    return normalize(x, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1))
