"""The conventional IDMM pre-training loop, written as a timm + torchvision user would write it
(and as the paper's official code does): the baseline bench/throughput.py measures idmm against.

PIL decodes each PNG in a DataLoader worker, torchvision.transforms.v2 makes the 6 crops of each
image one by one, the main process batches them, applies timm's Mixup (CutMix + label smoothing)
per crop size, runs the timm model and a Linear instance head in fp32 and steps AdamW.
Nothing is made deliberately slow: the library defaults, one worker per core, persistent workers.
"""

from __future__ import annotations

import os
import time

import timm
import torch
from machine import tree_peak_rss_mb
from step_flops import step_gflop
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchvision import datasets
from torchvision.transforms import v2

from idmm.config import AugConfig
from idmm.methods.settings import IDMMConfig
from idmm.models import PRESETS

MEAN, STD = (0.286,) * 3, (0.353,) * 3  # FMNIST's statistics (grey replicated to RGB)


def crop_transform(size: int, scale: tuple[float, float], aug: AugConfig) -> v2.Compose:
    """One crop with the same operations and probabilities as idmm's batched augmentation."""
    sigma = tuple(s * size / 112 for s in aug.blur_sigma)  # idmm scales the blur with the size
    kernel = 2 * int(3 * sigma[1] + 0.5) + 1
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(aug.flip_p),
        v2.RandomApply([v2.ColorJitter(*aug.color_jitter)], p=aug.color_jitter_p),
        v2.RandomGrayscale(aug.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=aug.blur_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])  # fmt: skip


class MultiCrop:
    def __init__(self, size: int, local: int, aug: AugConfig):
        self.glob = crop_transform(size, aug.global_scale, aug)
        self.loc = crop_transform(local, aug.local_scale, aug)
        self.counts = (aug.global_crops, aug.local_crops)

    def __call__(self, img):
        img = img.convert("RGB")
        return [self.glob(img) for _ in range(self.counts[0])] + [
            self.loc(img) for _ in range(self.counts[1])
        ]


class IndexedFolder(datasets.ImageFolder):
    """ImageFolder that returns the image's index: the instance-discrimination target."""

    def __getitem__(self, i):
        crops, _ = super().__getitem__(i)
        return crops, i


class ReferenceLoop:
    def __init__(self, case: dict, folder: str, precision: str = "fp32"):
        # fp32 is the reference; bf16 (autocast) separates idmm's precision gain from the rest
        self.precision = precision
        aug = AugConfig(global_scale=(0.35, 1.0), local_scale=(0.15, 0.5))  # the CPU recipe's
        self.counts = (aug.global_crops, aug.local_crops)
        self.case = case
        ds = IndexedFolder(folder, transform=MultiCrop(case["size"], case["local"], aug))
        workers = len(os.sched_getaffinity(0))
        self.loader = torch.utils.data.DataLoader(
            ds, batch_size=case["batch"], shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=True, prefetch_factor=2,
        )  # fmt: skip
        self.prefetched = workers * 2
        self.it = iter(self.loader)
        arch, kw = PRESETS.get(case["model"], (case["model"], {}))
        self.model = timm.create_model(arch, num_classes=0, img_size=case["size"],
                                       dynamic_img_size=True, drop_path_rate=0.1, **kw)  # fmt: skip
        self.head = torch.nn.Linear(self.model.num_features, len(ds))
        idmm = IDMMConfig()
        self.mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=idmm.cutmix_alpha,
                           label_smoothing=idmm.label_smoothing, num_classes=len(ds))  # fmt: skip
        self.loss_fn = SoftTargetCrossEntropy()
        params = [*self.model.parameters(), *self.head.parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-3)

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def _groups(self, crops, idx):
        g, n = self.counts
        return [(torch.cat(crops[:g]), idx.repeat(g)), (torch.cat(crops[g : g + n]), idx.repeat(n))]

    def forward_backward(self, groups) -> None:
        loss = 0.0
        bf16 = self.precision == "bf16"
        for x, target in groups:
            x, soft = self.mixup(x, target)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss + self.loss_fn(self.head(self.model(x)).float(), soft)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, n: int) -> list[tuple[float, float]]:
        # batches the workers prefetched while the other pipeline ran are not counted
        for _ in range(self.prefetched):
            self._next()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            crops, idx = self._next()
            t1 = time.perf_counter()
            self.forward_backward(self._groups(crops, idx))
            times.append((t1 - t0, time.perf_counter() - t1))
        return times

    def info(self) -> dict:
        crops, idx = self._next()
        groups = self._groups(crops, idx)
        return {
            "precision": self.precision,
            "crops_per_image": sum(self.counts),
            "params_m": round(sum(p.numel() for p in self.model.parameters()) / 1e6, 2),
            "step_gflop": step_gflop(lambda: self.forward_backward(groups)),
            "workers": self.loader.num_workers,
        }

    def final(self) -> dict:
        return {"peak_rss_mb": round(tree_peak_rss_mb(os.getpid()))}
