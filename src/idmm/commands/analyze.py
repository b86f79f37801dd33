"""`idmm analyze RUN_DIR ...`: the paper's analyses of a representation (idmm.analysis), for any
run: an `idmm run` directory or a pre-training run (the pre-trained backbone is analysed), or a
fine-tuning run (e.g. supervised from scratch: the classifier's penultimate features).

t-SNE of test-split features, alignment and uniformity on training-split images (final and per
snapshot), and for IDMM the instance head's class structure and gradient coverage. Writes
OUT/analysis.json and OUT/plots/*.png.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .. import analysis, models
from ..builders import load_data, resolve, runtime
from ..config import AugConfig, ConfigError
from ..engine.checkpoint import load_checkpoint, write_json
from ..eval.features import extract_features
from ..rundir import RunDir, check_out
from .export import load_model

LOG = logging.getLogger("idmm")


def representation_of(path: str | Path) -> tuple[RunDir, Path, str]:
    """(run, weights, kind): a run's pre-trained backbone, else its fine-tuned classifier."""
    run = RunDir.find(path).require()
    if run.kind != "finetune" and run.pretrained().backbone.is_file():
        return run.pretrained(), run.pretrained().backbone, "backbone"
    weights = run.classifier_weights()
    if weights is None:
        raise ConfigError(f"{path}: no backbone.safetensors or model.safetensors; pass a "
                          "finished run")  # fmt: skip
    return run, weights, "classifier"


def load_representation(weights: Path, kind: str) -> torch.nn.Module:
    model = load_model(weights)
    return models.PreLogits(model).eval() if kind == "classifier" else model


def _snapshots(run: RunDir) -> list[tuple[int, Path]]:
    found = []
    for p in sorted(run.snapshots.glob("epoch_*.safetensors")):
        found.append((int(re.findall(r"\d+", p.stem)[0]), p))
    return found


def analyze_run(path: str | Path, n_points: int, coverage_steps: int) -> dict:
    run, weights, kind = representation_of(path)
    cfg = run.read_config()
    rt = runtime(cfg)
    model = load_representation(weights, kind).to(rt.device)
    pc = model.pretrained_cfg if kind == "backbone" else model.model.pretrained_cfg
    size, mean, std = pc["input_size"][-1], pc["mean"], pc["std"]
    cfg.img_size = size
    data = load_data(cfg, run, size=size)  # the run's splits, decoded at the model's size
    test, train = data.test, data.train
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_points]
    feats = extract_features(model, test.images[pick], size, mean, std, rt)
    aug = getattr(cfg, "aug", AugConfig())  # a fine-tuning run has no multi-crop of its own
    init = getattr(cfg, "init", None) or getattr(getattr(cfg, "finetune", None), "init", None)
    method = cfg.method if kind == "backbone" else ("fine-tuned" if init else "scratch")
    result: dict[str, Any] = {
        "run": str(path), "kind": kind, "method": method, "model": cfg.model,
        "split": data.splits.test_from, "classes": test.classes,
        "embedding": analysis.embed_2d(feats.numpy()).tolist(),
        "labels": test.labels[pick].tolist(),
    }  # fmt: skip
    args = (size, mean, std, aug, rt)
    result["final"] = analysis.alignment_uniformity(model, train.images[:1024], *args)
    result["final"]["epoch"] = cfg.epochs if kind == "backbone" else None
    result["over_epochs"] = []
    for epoch, snap_path in _snapshots(run):
        snap = load_representation(snap_path, "backbone").to(rt.device)
        au = analysis.alignment_uniformity(snap, train.images[:1024], *args)
        result["over_epochs"].append({"epoch": epoch, **au})
    head = _instance_head(run, len(train)) if kind == "backbone" else None
    if head is not None:  # an N-way instance head (IDMM): row i = training image i
        result["head"] = analysis.head_structure(head, train.labels)
        if coverage_steps:
            c = copy.deepcopy(cfg)
            c.out = str(run.path / "analysis_tmp")
            resolve(c, rt, train)
            result["gradient_coverage"] = analysis.gradient_coverage(c, train, rt, coverage_steps)
    return result


def _instance_head(run: RunDir, num_images: int) -> torch.Tensor | None:
    """The pre-training's instance-head weights, when its method has one row per image."""
    if not run.checkpoint.is_file():
        return None
    head = load_checkpoint(run.checkpoint)["method"].get("head.weight")
    return head if head is not None and head.shape[0] == num_images else None


def run_name(run: str | Path) -> str:
    return Path(str(run).rstrip("/")).name or str(run)


def analyze(runs: list[str | Path], out: str | Path | None = None, points: int = 2000,
            coverage_steps: int = 30) -> dict:  # fmt: skip
    """Analyse each run; writes OUT/analysis.json and OUT/plots/*.png. OUT defaults to
    RUN/analysis for one run and to the runs' common parent/analysis for several."""
    if not runs:
        raise ConfigError("idmm analyze needs at least one run directory")
    paths = [Path(r) for r in runs]
    if out is None:
        out = paths[0] / "analysis" if len(paths) == 1 else _common_parent(paths) / "analysis"
    out = check_out(Path(out))
    results = {}
    for p in paths:
        LOG.info(f"analysing {p}")
        results[run_name(p)] = analyze_run(p, points, coverage_steps)
    plots_dir = out / "plots"
    analysis.plot_embeddings(results, plots_dir / "embedding.png")
    analysis.plot_alignment_uniformity(results, plots_dir / "alignment_uniformity.png")
    if any("gradient_coverage" in r for r in results.values()):
        analysis.plot_coverage(results, plots_dir / "head_gradient_coverage.png")
    write_json(out / "analysis.json", results)
    return results


def _common_parent(paths: list[Path]) -> Path:
    parts = [p.resolve().parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path(".")
