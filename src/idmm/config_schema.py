"""The config schema, one dataclass per stage (see idmm.config for building and checking).

- `PretrainConfig`: a pre-training run; each registered method's settings are a section named
  by the method (`idmm.*`, `contrastive.*`, `dino.*`, `supervised.*`), from the registry.
- `FinetuneConfig`: a fine-tuning run, the fine-tuning keys at its top level.
- `RunConfig` (`idmm.Config`): a recipe and `idmm run`: pre-training at the top, `finetune.*`.
`pretrain_config` / `finetune_config` cut a stage out of a recipe; `run_config` joins them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .methods import method_settings
from .methods.settings import SupervisedConfig

# The linear probe's learning rates, each tried and the best chosen on validation.
# Half-decades for z-scored inputs and SGD momentum 0.9 (effective step 10 lr). With no weight
# decay a small lr (few effective steps) is the regulariser: on noisy synthetic features of the
# target sizes the optimum was 1e-3..3e-3 (3e-4 close behind on 5x the samples), 1.0 never won,
# clean data was flat; on IDMM features of FMNIST-2040, 0.3 won, so 1.0 closes the grid. A
# diverging lr just loses the selection. Eight heads cost ~1.4x four.
DEFAULT_LRS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # a folder, a CSV of path,label, or a dataset name
    root: str | None = None  # where a named dataset lives on disk
    subset_per_class: int | None = None  # class-balanced subset (204 on FMNIST = FMNIST-2040)
    subset_seed: int = 0  # which images the subset draws
    # Splits, decided once per run directory (splits.json) and read back by every later stage:
    # validation = data.val (a folder or CSV) or a seeded stratified hold-out of the training
    # images; test = the dataset's own test split, data.test, or a hold-out of the training images.
    val: str | None = None  # a validation folder or CSV; None = a hold-out of the training images
    test: str | None = None  # a test folder or CSV when the dataset has no test split
    val_fraction: float = 0.1  # of the training images held out for validation (0 = none)
    test_fraction: float = 0.2  # only when the dataset has no test split and data.test is unset
    split_seed: int = 0  # which images the hold-outs take
    skip_bad: bool = False  # skip unreadable images with a warning instead of failing
    cache_size: int | None = None  # decode resolution; None = the training image size
    # A decoded set larger than this many GiB goes to a memory-mapped file in cache_dir
    # (default ~/.cache/idmm or $IDMM_CACHE), built once and reused while the source is unchanged.
    memmap_gb: float = 4.0  # above this many GiB decoded, a memory-mapped file
    cache_dir: str | None = None  # where those files live; None = ~/.cache/idmm or $IDMM_CACHE
    # Normalisation; None = the per-channel mean/std of the cached training images (recorded
    # in the resolved config so evaluation and fine-tuning use the same numbers).
    mean: tuple[float, float, float] | None = None  # None = of the training split's images
    std: tuple[float, float, float] | None = None  # None = of the training split's images

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
            ("test_fraction", self.val_fraction + self.test_fraction < 1,
             "below 1 - data.val_fraction"),
        ]  # fmt: skip


@dataclass
class AugConfig:
    global_crops: int = 2  # global crops per image, img_size px each
    local_crops: int = 4  # local crops per image, aug.local_size px each; 0 = none
    global_scale: tuple[float, float] = (0.14, 1.0)  # RandomResizedCrop area range of global crops
    local_scale: tuple[float, float] = (0.05, 0.4)  # RandomResizedCrop area range of local crops
    local_size: int | None = None  # None = the global crop size (the official code's choice)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # bright/contr/sat/hue
    color_jitter_p: float = 0.8  # probability of colour jitter, per crop
    grayscale_p: float = 0.2  # probability of grayscale, per crop
    blur_p: float = 0.5  # probability of Gaussian blur, per crop
    # Blur sigma in pixels of a 112-px crop (the paper's resolution); scaled with the crop size so
    # that a 28-px Fashion-MNIST crop is blurred as much, relatively, as a 112-px photo.
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma (lo, hi) in px of a 112-px crop, scaled
    flip_p: float = 0.5  # probability of a horizontal flip, per crop
    # Progressive resolution (issue 17's lever): the global crops grow linearly to img_size by
    # `progressive_until` of the epochs, in steps of the greatest common divisor of the two
    # sizes (multiples of the patch when both are)
    progressive_from: int | None = None  # the global crops' size at the start; None = off
    progressive_until: float = 0.5  # the fraction of the epochs after which crops are full size

    def problems(self) -> list[tuple[str, bool, str]]:
        scale = "(lo, hi) with 0 < lo <= hi <= 1"
        start = self.progressive_from
        return [
            ("progressive_from", start is None or start >= 1, "a size in px (or none)"),
            ("progressive_until", 0 < self.progressive_until <= 1, "in (0, 1]"),
            ("global_crops", self.global_crops >= 1, "at least 1"),
            ("local_crops", self.local_crops >= 0, "0 or more"),
            ("global_scale", 0 < self.global_scale[0] <= self.global_scale[1] <= 1, scale),
            ("local_scale", 0 < self.local_scale[0] <= self.local_scale[1] <= 1, scale),
        ]


@dataclass
class LinearConfig:
    """Linear probe on frozen features: every lr of the grid trains in one pass."""

    lrs: tuple[float, ...] = DEFAULT_LRS  # SGD on standardised features
    epochs: int = 100  # training epochs of the probe (every lr)
    val_fraction: float = 0.2  # without a validation split: held out of train to choose the lr

    def problems(self) -> list[tuple[str, bool, str]]:
        return [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("lrs", len(self.lrs) >= 1 and min(self.lrs) > 0, "positive lrs"),
            ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
        ]


@dataclass
class CommonConfig:
    """What every stage has: data, where it runs and writes, and how."""

    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/idmm"  # the run directory: config, checkpoints, results
    model: str = "auto"  # any timm model name or a preset from idmm.models.PRESETS
    seed: int = 0  # initial weights, augmentation, data order (splits: data.split_seed)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    compile: bool = False  # torch.compile the training forward (GPU speed; ~30 s per new shape)
    resume: bool = False  # continue out/checkpoints/last.ckpt exactly
    # A time limit for the whole command (20m, 2h, 1h30m): each stage's epochs are set after
    # its first epoch so that all stages end within it (idmm.engine.budget); none = the epochs.
    budget: str | None = None  # e.g. 20m, 2h: the whole command within it
    # A NaN/inf loss stops training (the last good checkpoint is kept); true skips the step
    # instead and counts it (metrics.jsonl, results.json: skipped_steps).
    skip_nonfinite: bool = False  # skip a NaN/inf-loss step instead of stopping
    overwrite: bool = False  # start afresh in an out= that already holds a run
    eval_batch_size: int = 512  # images per batch in evaluation (features, validation)
    progress: str = "auto"  # auto (a bar on a terminal) | bar | log
    # Recorded, not set: batch_size x processes (under torchrun), which `lr` was scaled by.
    global_batch_size: int | None = None  # recorded by the run; leave unset
    linear: LinearConfig = field(default_factory=LinearConfig)


@dataclass
class _Pretrain(CommonConfig):
    method: str = "idmm"  # idmm | simclr | supcon | dino | supervised
    img_size: int | None = None  # None = auto: from the images and the device (idmm.auto)
    epochs: int | None = None  # pre-training epochs; None/auto: from the data and device
    # (idmm.auto.resolve_epochs; with budget=, set after the first epoch)
    batch_size: int | None = None  # None/auto: 256 (the paper), fewer on small data
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float = 5e-4  # peak lr at a global batch of 256 (see lr)
    min_lr: float = 0.0  # the lr at the end of the cosine decay
    weight_decay: float = 1e-3  # AdamW weight decay (DINO: dino.weight_decay)
    warmup_epochs: float = 2.0  # linear lr warm-up, in epochs (fractions allowed)
    clip_grad: float | None = None  # total gradient-norm clip; None/0 = off
    drop_path: float = 0.1  # stochastic-depth rate of the backbone
    ema: float = 0.0  # decay of a weight average (e.g. 0.999) the monitor and export use; 0 = off
    knn_every: int = 0  # online kNN monitor (on the validation split) every N epochs; 0 = off
    snapshot_every: int = 0  # snapshots/epoch_N.safetensors every N epochs
    knn_k: tuple[int, ...] = (10, 20, 100, 200)  # k values of the kNN monitor/eval (top1: k=20)
    knn_temperature: float = 0.07  # T of the kNN vote weights exp(cosine / T)
    aug: AugConfig = field(default_factory=AugConfig)


def _with_method_sections(base: type, name: str) -> type:
    """`base` plus one section per registered method's settings (`idmm`, `dino`, ...)."""
    sections = [(key, cls, field(default_factory=cls)) for key, cls in method_settings().items()]
    cls = dataclasses.make_dataclass(name, sections, bases=(base,))
    cls.__module__ = __name__
    return cls


PretrainConfig = _with_method_sections(_Pretrain, "PretrainConfig")


@dataclass
class FinetuneSettings(SupervisedConfig):
    """Supervised fine-tuning (DeiT recipe, as the paper), also the from-scratch baseline: the
    `finetune.*` section of a recipe, and the top level of a fine-tuning run's config."""

    init: str | None = None  # a run directory or a .safetensors file; None = from scratch
    epochs: int | None = None  # fine-tuning epochs; None/auto: GPU 100, CPU half of pre-training's
    img_size: int | None = None  # None = the pre-training img_size (the paper: 112 -> 224)
    batch_size: int | None = None  # None/auto: 256 (the paper), fewer on small data
    lr: float | None = None  # None = base_lr * batch_size / 256
    base_lr: float = 5e-4  # peak lr at a global batch of 256 (see lr)
    min_lr: float = 1e-6  # the lr at the end of the cosine decay
    weight_decay: float = 1e-3  # AdamW weight decay
    warmup_epochs: float = 2.0  # linear lr warm-up, in epochs (fractions allowed)
    clip_grad: float | None = None  # total gradient-norm clip; None/0 = off
    drop_path: float = 0.1  # stochastic-depth rate of the backbone
    # BEiT's and MAE's: block i of L at lr x layer_decay^(L - i), the head at the full lr, so
    # fine-tuning moves the pre-trained lower blocks less
    layer_decay: float = 1.0  # layer-wise lr decay, e.g. 0.75; 1 = off (the paper)
    ema: float = 0.0  # decay of a weight average (e.g. 0.999) evaluation and export use; 0 = off
    # "random" (the paper) or "probe": with init=, the new head starts as a linear probe of the
    # pre-trained features (LP-FT), so its first gradients do not scramble them
    head_init: str = "random"  # random | probe (LP-FT: a linear-probe head)
    eval_every: int = 1  # validation accuracy every N epochs (and always after the last)
    # An optional second stage at a higher resolution (the paper's 224 -> 448), starting from
    # the first stage's model; 0 epochs = no second stage.
    stage2_img_size: int | None = None  # second-stage image size; None = img_size
    stage2_epochs: int = 0  # second-stage epochs; 0 = no second stage
    stage2_batch_size: int | None = None  # None = batch_size (the paper: 128)
    stage2_base_lr: float = 1e-4  # the paper: lr 5e-5 at batch 128


@dataclass
class FinetuneConfig(FinetuneSettings, CommonConfig):
    """A fine-tuning run: the common keys and the fine-tuning keys, all at the top level."""


@dataclass
class RunConfig(PretrainConfig):  # type: ignore[misc, valid-type]
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    # `idmm run` only: also train the classifier from scratch for as many epochs as
    # pre-training + fine-tuning, the supervised baseline the report compares against.
    baseline: bool = False  # idmm run: also a from-scratch supervised baseline


Config = RunConfig  # the recipe schema; `idmm.Config`


def _fill(target: Any, fields_of: type, source: Any) -> Any:
    for f in dataclasses.fields(fields_of):
        setattr(target, f.name, copy.deepcopy(getattr(source, f.name)))
    return target


def pretrain_config(run: RunConfig) -> Any:
    """The pre-training stage of a recipe: its top-level keys, without `finetune.*`."""
    return _fill(PretrainConfig(), PretrainConfig, run)


def finetune_config(run: RunConfig) -> FinetuneConfig:
    """The fine-tuning stage of a recipe: the common keys and `finetune.*` at the top level."""
    return _fill(_fill(FinetuneConfig(), CommonConfig, run), FinetuneSettings, run.finetune)


def run_config(pre: Any, ft: FinetuneConfig, baseline: bool = False) -> RunConfig:
    """A recipe from its two stages (what `idmm run` records): the inverse of the two cuts."""
    run = _fill(RunConfig(), PretrainConfig, pre)
    _fill(run.finetune, FinetuneSettings, ft)
    run.baseline = baseline
    return run


def schema_of(d: dict) -> type:
    """Which config a run directory's config.yaml holds, from its keys."""
    if "finetune" in d:
        return RunConfig
    return FinetuneConfig if "init" in d else PretrainConfig
