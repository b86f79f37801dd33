"""`idmm eval knn|linear`: a pre-trained backbone on frozen features.

    feats = frozen_features("runs/fm")      # computed once...
    knn(feats); linear(feats)               # ...and passed on (idmm run does this)

`checkpoint=` is a pre-training run, an `idmm run` directory or a file inside one. Features come
from the run's own splits (splits.json): the training split is the neighbour pool and the probe's
training set, the validation split chooses (the probe's lr), the test split is reported.
Passing `data=` evaluates on another dataset, split by its own rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import models
from ..builders import load_data, runtime
from ..config import set_key
from ..data.sources import DataError
from ..engine.log import setup_logging
from ..eval.features import extract_features
from ..eval.knn import headline_k, knn_top1
from ..eval.linear import edge_warning, linear_probe
from ..rundir import RunDir


@dataclass
class FrozenFeatures:
    run: RunDir  # the pre-training run: results go to its results.json
    cfg: Any
    is_main: bool
    log: Any
    train: tuple[torch.Tensor, torch.Tensor]  # (features, labels)
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    test_from: str
    num_classes: int


def frozen_features(checkpoint: Any, **overrides: Any) -> FrozenFeatures:
    """Features of a pre-trained backbone on the train, val and test splits. Under torchrun
    every process computes them; only rank 0 writes results."""
    run = RunDir.find(checkpoint).require().pretrained()
    weights = run.backbone_weights()
    cfg = run.read_config()
    cfg.device, cfg.precision = "auto", "auto"  # where it runs now, not where it was trained
    other_data = bool({"data", "data.source"} & set(overrides))
    if other_data:  # the run's subset and root belong to the run's data, not to this one
        cfg.data.subset_per_class, cfg.data.root = None, None
    for k, v in overrides.items():
        set_key(cfg, k, v)
    rt = runtime(cfg)
    log = setup_logging(run.log_file, rt.is_main)
    backbone = models.create_backbone(cfg.model, cfg.img_size).to(rt.device)
    models.load_backbone_weights(backbone, weights)
    # other data: split by its own rules, unless it is the run's dataset split another way
    data = load_data(cfg, None if other_data else run, inherit=run if other_data else None)
    if data.train.labels is None or data.test is None:
        raise DataError(f"{cfg.data.source} has no labels; evaluation needs a labelled set")
    args = (cfg.img_size, cfg.data.mean, cfg.data.std, rt, cfg.eval_batch_size)

    def feats(d):
        return None if d is None else (extract_features(backbone, d.images, *args), d.labels)

    return FrozenFeatures(run, cfg, rt.is_main, log, feats(data.train), feats(data.val),
                          feats(data.test), data.splits.test_from,
                          len(data.train.classes))  # fmt: skip


def _record(f: FrozenFeatures, name: str, result: dict) -> None:
    if f.is_main:
        f.run.update_results(name, result)
        f.run.append_metrics({"eval": name, **result})


def knn(f: FrozenFeatures) -> dict:
    """Weighted cosine kNN with the training split as the pool; results.json['knn']."""
    c = f.cfg
    (tr, tr_y), (te, te_y) = f.train, f.test
    by_k = knn_top1(tr, tr_y, te, te_y, c.knn_k, c.knn_temperature)
    k = headline_k(c.knn_k)
    result = {
        "top1": by_k[k], "k": k, "top1_by_k": {str(kk): v for kk, v in by_k.items()},
        "temperature": c.knn_temperature, "data": c.data.source, "train_images": len(tr),
        "test_images": len(te), "test_split": f.test_from,
    }  # fmt: skip
    if f.val is not None:
        val_by_k = knn_top1(tr, tr_y, *f.val, c.knn_k, c.knn_temperature)
        result.update(val_top1=val_by_k[k], val_images=len(f.val[0]),
                      val_top1_by_k={str(kk): v for kk, v in val_by_k.items()})  # fmt: skip
    _record(f, "knn", result)
    table = "  ".join(f"k={kk}: {v * 100:.2f}%" for kk, v in by_k.items())
    val = f", val {result['val_top1'] * 100:.2f}%" if f.val is not None else ""
    f.log.info(f"kNN top-1 on {c.data.source} test ({len(te)} images, {len(tr)} training "
               f"images as neighbours): {table}{val} (k={k})")  # fmt: skip
    return result


def linear(f: FrozenFeatures) -> dict:
    """Linear probe on frozen features, lr chosen on the validation split; results['linear']."""
    c, lc = f.cfg, f.cfg.linear
    val_f, val_y = f.val if f.val is not None else (None, None)
    out = linear_probe(*f.train, *f.test, f.num_classes, lrs=tuple(lc.lrs), epochs=lc.epochs,
                       val_fraction=lc.val_fraction, seed=c.seed, val_f=val_f,
                       val_y=val_y)  # fmt: skip
    out.pop("predictions", None)
    out.pop("head", None)
    result = {**out, "data": c.data.source, "test_split": f.test_from}
    _record(f, "linear", result)
    grid = "  ".join(f"lr {lr}: {v * 100:.2f}%" for lr, v in out["val_top1_by_lr"].items())
    f.log.info(f"linear probe on {c.data.source}: {out['lr_chosen_on']} accuracy {grid}; lr "
               f"{out['best_lr']} -> test top-1 {out['top1'] * 100:.2f}% "
               f"({out['test_images']} images)")  # fmt: skip
    if warning := edge_warning(out):
        f.log.warning(warning)
    return result


def evaluate_knn(checkpoint: Any, **overrides: Any) -> dict:
    """`idmm eval knn checkpoint=RUN`: writes results.json['knn'] in the pre-training run."""
    return knn(frozen_features(checkpoint, **overrides))


def evaluate_linear(checkpoint: Any, **overrides: Any) -> dict:
    """`idmm eval linear checkpoint=RUN`: writes results.json['linear'] in the pre-training run."""
    return linear(frozen_features(checkpoint, **overrides))
