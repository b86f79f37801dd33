"""The training loop, shared by every method.

Read it top to bottom: `fit` resumes if asked, then runs epochs; `train_epoch` shuffles, slices the
in-memory uint8 cache, lets the method make its views and loss, and steps AdamW under a
warm-up + cosine schedule. All randomness of an epoch is derived from (seed, epoch, rank), and a
checkpoint is written atomically after every epoch, so a killed run that resumes from it replays
exactly the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..config import to_dict
from ..config_types import TrainingError  # noqa: F401  (raised here; defined there)
from ..data.augment import MultiCrop, ShardGenerator
from ..data.cache import CachedData
from ..methods.base import Method
from ..methods.sharded_head import gather_rows, local_rows
from ..rundir import RunDir
from .budget import Budget
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Runtime, all_reduce_mean, all_reduce_sum
from .log import tensorboard, use_bar

Hook = Callable[[int], dict]  # epoch (1-based, completed) -> metrics to add to that epoch's record


def lr_at(step: int, total: int, warmup: int, peak: float, min_lr: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `min_lr` (the correct formula); a
    min_lr above the peak (a small user lr with the default floor) is capped at the peak."""
    min_lr = min(min_lr, peak)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def epoch_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def rss_mb() -> float:
    """Resident memory now (Linux), to see that it stays flat over a long run."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Trainer:
    def __init__(
        self,
        cfg,
        method: Method,
        data: CachedData,
        rt: Runtime,
        run: RunDir,
        log,
        hooks: list[Hook] = (),
        budget: Budget | None = None,
        stage: str = "train",
    ):
        self.cfg, self.method, self.data, self.rt = cfg, method, data, rt
        self.run, self.log, self.hooks = run, log, list(hooks)
        self.budget, self.stage = budget, stage  # budget=: epochs set after the first one
        self.tb = None  # a TensorBoard writer, opened by fit() (rank 0, when installed)
        self.ckpt_path = run.checkpoint
        method.to(rt.device)
        if rt.distributed and method.sharded_rows():
            # each process owns its rows of these: DDP must neither broadcast nor average them
            DDP._set_params_and_buffers_to_ignore_for_model(method, list(method.sharded_rows()))
        self.model = (
            DDP(method, device_ids=[rt.device] if rt.device.type == "cuda" else None)
            if rt.distributed
            else method
        )
        per_step = cfg.batch_size * rt.world_size
        if per_step > len(data):
            raise TrainingError(
                f"batch_size={cfg.batch_size} x {rt.world_size} process(es) is larger than the "
                f"{len(data)} training images; set batch_size<={len(data) // rt.world_size} "
                f"(finetune.batch_size for fine-tuning in a recipe or `idmm run`), or "
                "batch_size=auto"
            )
        self.steps_per_epoch = len(data) // per_step
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        if cfg.compile:
            self.model = torch.compile(self.model)
        groups = method.param_groups(cfg.lr, cfg.weight_decay)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=rt.device.type == "cuda")
        # fp16 (CUDA without bf16) needs loss scaling; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
        # Small caches live on the training device; augmentation then never leaves it.
        big = data.images.numel() > 2**31
        self.images = data.images if big else data.images.to(rt.device)
        self.labels = None if data.labels is None else data.labels.to(rt.device)
        self.epoch = 0
        self.step = 0
        self.skipped_steps = 0  # non-finite losses skipped (skip_nonfinite=true)
        # training seconds over every process that ran this run, so that a run killed and
        # resumed reports its whole time (benchmarks compare minutes), not the last part's
        self.train_time_s = 0.0

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything to continue exactly; row-sharded parameters and their optimiser state are
        gathered whole (a collective: every process calls this), so any world size can resume."""
        method, opt = self.method.state_dict(), self.opt.state_dict()
        self._map_sharded(method, opt, gather_rows)
        return {
            "method": method,
            "optimizer": opt,
            "epoch": self.epoch,
            "step": self.step,
            "config": to_dict(self.cfg),
            "num_images": len(self.data),
            "rng": {"torch": torch.get_rng_state()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "skipped_steps": self.skipped_steps,
            "train_time_s": self.train_time_s,
        }

    def _map_sharded(self, method: dict, opt: dict, fn) -> None:
        """fn(tensor, rows) on each row-sharded parameter and its AdamW moments, in the given
        state dicts (gather_rows to save, local_rows to resume)."""
        params = [p for group in self.opt.param_groups for p in group["params"]]
        named = dict(self.method.named_parameters())
        for name, rows in self.method.sharded_rows().items():
            method[name] = fn(method[name], rows)
            i = next(i for i, p in enumerate(params) if p is named[name])
            if i in opt["state"]:  # a new dict: state_dict() shares the optimiser's own
                opt["state"][i] = {
                    k: fn(v, rows) if v.dim() > 0 else v  # not the step count
                    for k, v in opt["state"][i].items()
                }

    def save(self) -> None:
        state = self.state()
        if not self.rt.is_main:
            return
        try:
            save_checkpoint(state, self.ckpt_path)
        except OSError as e:  # a full disk, a quota, a read-only or vanished directory
            raise TrainingError(
                f"could not write the checkpoint {self.ckpt_path} after epoch {self.epoch}: {e}. "
                "The previous checkpoint is intact; free space or fix the directory, then run "
                "the same command with resume=true"
            ) from e

    def resume(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        saved = ckpt["config"]
        for key in ("model", "method", "img_size", "ema"):
            now = getattr(self.cfg, key, None)  # fine-tuning has no method
            if saved.get(key, 0.0 if key == "ema" else None) != now:  # (no ema before it was)
                raise TrainingError(
                    f"cannot resume {self.ckpt_path}: it was trained with "
                    f"{key}={saved.get(key)!r}, this run asks for {key}={now!r}; use the same "
                    f"{key} or "
                    "another out="
                )
        if ckpt["num_images"] != len(self.data):
            raise TrainingError(
                f"cannot resume {self.ckpt_path}: it saw {ckpt['num_images']} training images, "
                f"the data now has {len(self.data)}"
            )
        self._map_sharded(ckpt["method"], ckpt["optimizer"], local_rows)  # this process's rows
        self.method.load_state_dict(ckpt["method"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        self.train_time_s = ckpt.get("train_time_s", 0.0)
        if self.budget is not None:
            self.budget.adopt(self.stage, saved["epochs"])
        if self.budget is not None and saved["epochs"] != self.cfg.epochs:
            self.cfg.epochs = saved["epochs"]  # the epochs its budget gave it when it started
            self.total_steps = self.steps_per_epoch * self.cfg.epochs
            if self.rt.is_main:
                self.run.write_config(self.cfg)
                self.log.info(f"budget={self.budget.text}: {self.cfg.epochs} epochs, as decided "
                              "when the run started")  # fmt: skip
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.rt.is_main:
            self.run.drop_metrics_after(self.epoch)
        self.log.info(f"resumed {self.ckpt_path} at epoch {self.epoch} (step {self.step})")

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.resume and self.ckpt_path.is_file():
            self.resume()
        else:
            if cfg.resume:
                self.log.info(f"resume=true but no checkpoint at {self.ckpt_path}: starting anew")
            torch.manual_seed(epoch_seed(cfg.seed, 0, 0))
            self.method.on_train_start(self.images)
        planning = self.budget is not None and self.epoch == 0  # budget=: epochs to decide
        earlier_s = self.train_time_s  # of an earlier invocation, when resumed
        start = time.perf_counter()
        seen = 0
        last = {}
        if self.rt.is_main and self.epoch < cfg.epochs:
            self.tb = tensorboard(self.run.tensorboard_dir)
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            loss = self.train_epoch()
            dt = time.perf_counter() - t0
            seen += self.steps_per_epoch * cfg.batch_size * self.rt.world_size
            self.epoch += 1
            last = {
                "epoch": self.epoch,
                "step": self.step,
                "loss": loss,
                "lr": self.opt.param_groups[0]["lr"],
                "images_per_s": self.steps_per_epoch * cfg.batch_size * self.rt.world_size / dt,
                "epoch_time_s": dt,
                "rss_mb": rss_mb(),
            }
            if cfg.skip_nonfinite:
                last["skipped_steps"] = self.skipped_steps
            for hook in self.hooks:
                last.update(hook(self.epoch))
            if planning:
                self.budget_check(start, dt)
            self.train_time_s += time.perf_counter() - t0
            if self.rt.is_main:
                self.run.append_metrics(last)
                if self.tb is not None:
                    for key, value in last.items():
                        self.tb.add_scalar(key, value, self.epoch)
            # Only after a finite epoch: a NaN never overwrites the last good state. A kill
            # between the two lines leaves a metrics line that `resume` drops and recomputes.
            self.save()
            if self.rt.is_main:
                extra = "".join(f" {k} {v:.4f}" for k, v in last.items() if "top" in k)
                eta = f", ~{(cfg.epochs - self.epoch) * dt / 60:.1f} min to go"
                if self.budget is not None:
                    eta += f" (budget: {self.budget.left() / 60:.1f} min left)"
                self.log.info(
                    f"epoch {self.epoch}/{cfg.epochs} loss {loss:.4f} lr {last['lr']:.2e} "
                    f"{last['images_per_s']:.0f} img/s{extra}{eta}"
                )
        if self.tb is not None:
            self.tb.close()
        if self.budget is not None:
            self.budget.finished(self.stage, earlier_s)
        total = time.perf_counter() - start
        if not seen:
            return {}  # resumed a finished run: nothing new to report
        return {
            "epochs": cfg.epochs,
            "final_loss": last.get("loss"),
            "time_s": self.train_time_s,
            "images_per_s": seen / total if seen else None,
            "peak_memory_mb": peak_memory_mb(self.rt.device),
            "skipped_steps": self.skipped_steps,
        }

    def budget_check(self, start: float, epoch_s: float) -> None:
        """budget=: the epochs decided after the first epoch (the second when compiling: the
        first paid for it, and would give too few epochs and a cosine run to its end), then
        checked at every tenth of them at a pace half from the epochs since the check before
        and half from the estimate before it (the first epoch left out): a few epochs' pace is
        noisy (the machine, the kNN monitor's epochs), and taken alone it moved the plan by ~10%
        each way from one check to the next, each move a jolt to the lr schedule; this way a
        pace that lasts is followed within a few checks."""
        first = 2 if self.cfg.compile else 1
        now = time.perf_counter() - start
        if self.epoch == first:
            self.last_check, self.pace = (now, first), None
            self.set_epochs(epoch_s if self.cfg.compile else now)
            self.recheck = max(3, self.cfg.epochs // 10)
        elif self.epoch > first and self.epoch % self.recheck == 0:
            spent, at = self.last_check
            self.last_check = (now, self.epoch)
            recent = (now - spent) / (self.epoch - at)
            self.pace = recent if self.pace is None else (self.pace + recent) / 2
            self.set_epochs(self.pace)

    def set_epochs(self, epoch_s: float) -> None:
        """budget=: the epochs the budget gives this stage at `epoch_s` an epoch (see
        engine.budget); written to config.yaml (and so to every checkpoint: resume keeps them)."""
        cfg, asked = self.cfg, self.cfg.epochs
        epochs = self.budget.plan(self.stage, self.epoch, epoch_s, self.data, self.rt)
        if self.rt.distributed:  # every process must run the same epochs: their mean, rounded
            epochs = int(round(all_reduce_mean(float(epochs), self.rt)))
            self.budget.given[self.stage] = epochs  # what runs: the next plan starts from it
        if self.epoch > 1 and epochs == asked:
            return
        cfg.epochs = epochs
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if self.rt.is_main:
            self.run.write_config(cfg)
            b = self.budget
            later = "".join(f", {s} {b.planned(s)} at ~{b.paces[s]:.1f} s" for s in b.epochs
                            if s != self.stage and b.scale is not None)  # fmt: skip
            self.log.info(
                f"budget={b.text}: {self.stage} {cfg.epochs} epochs at {epoch_s:.1f} s each "
                f"(planned: {asked}; the recipe's epochs x {b.scale or 0:.2f}{later}); "
                f"{b.left() / 60:.1f} min left for the whole command"
            )

    def train_epoch(self) -> float:
        cfg, rt = self.cfg, self.rt
        torch.manual_seed(epoch_seed(cfg.seed, self.epoch, rt.rank, 1))  # drop-path etc.
        # Augmentation and mixing draws are the same on every rank and each rank keeps its
        # samples' share (ShardGenerator), so K ranks x batch B augment as 1 x batch K*B.
        # (rank 0's seeds: a single process draws what it always drew)
        rng = np.random.default_rng(epoch_seed(cfg.seed, self.epoch, 0, 2))
        g = torch.Generator(device=rt.device).manual_seed(epoch_seed(cfg.seed, self.epoch, 0, 3))
        if rt.distributed:
            g = ShardGenerator(g, rt.world_size, rt.rank)
        # One permutation for all ranks, then each rank takes its own shard of it.
        order = torch.randperm(
            len(self.data),
            generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, self.epoch)),
        )
        per_step = cfg.batch_size * rt.world_size
        self.method.train()
        self.method.on_epoch_start(self.epoch)
        views = self.method.views
        if isinstance(views, MultiCrop) and views.aug.progressive_from is not None:
            before = views.groups[0].size
            size = views.at_progress(self.epoch / cfg.epochs)  # progressive resolution
            if rt.is_main and size != before:
                self.log.info(f"epoch {self.epoch + 1}: global crops at {size} px")
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (rt.is_main and use_bar(cfg.progress)),
        )
        total, finite, t0 = 0.0, 0, time.perf_counter()
        for i in bar:
            idx = order[i * per_step : (i + 1) * per_step][rt.rank :: rt.world_size]
            loss = self.train_step(idx, rng, g)
            if loss is not None:  # None: a skipped non-finite step
                total, finite = total + loss, finite + 1
            speed = (i + 1) * per_step / (time.perf_counter() - t0)
            lr = self.opt.param_groups[0]["lr"]
            mean = total / max(1, finite)
            left = {} if self.budget is None else {"left": f"{self.budget.left() / 60:.1f}m"}
            bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.1e}", img_s=f"{speed:.0f}", **left)
        return all_reduce_mean(total / max(1, finite), rt)

    def non_finite(self, value: float, lr: float) -> None:
        """A NaN/inf loss on any process: stop (default) or, with skip_nonfinite, skip the step."""
        where = f"epoch {self.epoch + 1}, step {self.step} (lr {lr:.2e})"
        if not self.cfg.skip_nonfinite:
            raise TrainingError(
                f"loss is {value} at {where}; the last good checkpoint is kept at "
                f"{self.ckpt_path}. Lower lr, set clip_grad, use precision=fp32, or set "
                "skip_nonfinite=true to skip such steps"
            )
        self.opt.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.step += 1  # the schedule moves on as if the step had been taken
        self.log.warning(f"skipped a non-finite loss ({value}) at {where}")
        return None

    def train_step(self, idx: torch.Tensor, rng: np.random.Generator, g) -> float | None:
        cfg, rt = self.cfg, self.rt
        lr = lr_at(self.step, self.total_steps, self.warmup_steps, cfg.lr, cfg.min_lr)
        wd = self.method.weight_decay_at(self.step / max(1, self.total_steps))
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
            if wd is not None and group.get("decay", True):
                group["weight_decay"] = wd
        dev_idx = idx.to(rt.device)
        images = self.images[dev_idx if self.images.device == rt.device else idx].to(rt.device)
        labels = None if self.labels is None else self.labels[dev_idx]
        batch = self.method.prepare(images, dev_idx, labels, rng, g)
        with rt.autocast():
            loss, _ = self.model(batch)
        value = loss.item()
        bad = not math.isfinite(value)
        if rt.distributed:  # every process skips or stops together
            bad = bool(all_reduce_sum(torch.tensor([float(bad)], device=rt.device)).item())
        if bad:
            return self.non_finite(value, lr)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.clip_grad)
            self.method.before_optimizer_step()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.clip_grad)
            self.method.before_optimizer_step()
            self.scaler.step(self.opt)
            self.scaler.update()
        self.method.on_step_end((self.step + 1) / self.total_steps)
        self.step += 1
        self.method.update_ema(self.step)
        return value
