"""The fine-tuning view: the paper's DeiT-style transform on whole uint8 batches.

Its own module because it combines the multi-crop primitives (idmm.data.augment) with
RandAugment (idmm.data.randaugment), which itself builds on those primitives.
"""

from __future__ import annotations

import torch

from .augment import color_jitter, normalize, random_grayscale, random_resized_crop
from .randaugment import rand_augment


class FinetuneView:
    """The paper's fine-tuning transform on a uint8 batch: random-resized crop and flip,
    RandAugment, colour jitter, grayscale, then normalisation. Mixing is the method's job."""

    def __init__(self, ft, size: int, mean, std):
        self.ft, self.size = ft, size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        ft = self.ft
        x = images.float().div_(255)
        x = random_resized_crop(x, self.size, tuple(ft.crop_scale), g, flip_p=ft.flip_p)
        if ft.randaug_ops:
            x = rand_augment(x, g, ft.randaug_ops, tuple(ft.randaug_magnitude), p=ft.randaug_p)
        x = color_jitter(x, tuple(ft.color_jitter), ft.color_jitter_p, g)
        x = random_grayscale(x, ft.grayscale_p, g)
        return normalize(x, self.mean, self.std)
