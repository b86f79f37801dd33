"""idmm's own pre-training step, for bench/throughput.py: its Trainer.train_step on the decoded
uint8 cache of the same PNG folder, with the CPU recipe and this machine's default precision."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import tree_peak_rss_mb
from step_flops import step_gflop

from idmm.builders import build_method, load_data, make_config, resolve, runtime
from idmm.engine.trainer import Trainer
from idmm.models import set_fused_attention
from idmm.rundir import RunDir

RECIPE = Path(__file__).resolve().parents[1] / "configs/cpu/fmnist2040.yaml"


class IdmmLoop:
    def __init__(self, case: dict, folder: str, precision: str = "auto", compile: bool = False,
                 fused_attn: bool | None = None, channels_last: bool = False):  # fmt: skip
        """The trainer's step; `precision`, `compile` as the config keys; `fused_attn` and
        `channels_last` (the conv stem's memory format) to try other CPU paths."""
        self.tmp = tempfile.mkdtemp()
        cfg = make_config(RECIPE, model=case["model"], img_size=case["size"],
                          batch_size=case["batch"], out=self.tmp, epochs=1000, progress="log",
                          precision=precision, compile=compile,
                          **{"aug.local_size": case["local"], "data.source": folder,
                             "data.subset_per_class": None})  # fmt: skip
        rt = runtime(cfg)
        t = time.perf_counter()
        data = load_data(cfg, None, with_test=False).train
        self.cache_s = time.perf_counter() - t  # decoded once per run, not per epoch
        resolve(cfg, rt, data)
        method = build_method(cfg, rt, len(data), len(data.classes))
        if fused_attn is not None:
            set_fused_attention(method.backbone, fused_attn)
        if channels_last:
            method.to(memory_format=torch.channels_last)
            data.images = data.images.contiguous(memory_format=torch.channels_last)
        self.trainer = Trainer(cfg, method, data, rt, RunDir(self.tmp), logging.getLogger("bench"))
        self.cfg, self.rt, self.data_s = cfg, rt, 0.0
        prepare = method.prepare

        def timed_prepare(*args):  # the data part of the step: batched crops and CutMix
            t0 = time.perf_counter()
            out = prepare(*args)
            self.data_s += time.perf_counter() - t0
            return out

        method.prepare = timed_prepare
        self.rng = np.random.default_rng(0)
        self.g = torch.Generator().manual_seed(0)
        self.order = torch.randperm(len(data))
        self.pos = 0

    def _idx(self) -> torch.Tensor:
        b = self.cfg.batch_size
        if self.pos + b > len(self.order):
            self.order, self.pos = torch.randperm(len(self.order)), 0
        self.pos += b
        return self.order[self.pos - b : self.pos]

    def run(self, n: int) -> list[tuple[float, float]]:
        self.trainer.method.train()
        times = []
        for _ in range(n):
            self.data_s = 0.0
            t0 = time.perf_counter()
            self.trainer.train_step(self._idx(), self.rng, self.g)
            total = time.perf_counter() - t0
            times.append((self.data_s, total - self.data_s))
        return times

    def info(self) -> dict:
        aug = self.cfg.aug
        return {
            "precision": self.rt.precision,
            "crops_per_image": aug.global_crops + aug.local_crops,
            "params_m": round(
                sum(p.numel() for p in self.trainer.method.backbone.parameters()) / 1e6, 2
            ),  # fmt: skip
            "step_gflop": step_gflop(
                lambda: self.trainer.train_step(self._idx(), self.rng, self.g)
            ),  # fmt: skip
            "cache_build_s": round(self.cache_s, 2),
        }

    def final(self) -> dict:
        return {"peak_rss_mb": round(tree_peak_rss_mb(os.getpid()))}
