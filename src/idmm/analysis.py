"""`idmm analyze RUN_DIR ...`: the paper's analyses of a representation, for any run.

- a 2-D t-SNE of the test features, coloured by class, one panel per run;
- alignment and uniformity (Wang and Isola, 2020) of the L2-normalised features of two augmented
  views, for the final backbone and for each snapshot (`snapshot_every=N` during pre-training);
- for IDMM runs, the instance head: the class structure of its learned rows (does each row's
  nearest row belong to an image of the same class? within- vs between-class cosine), which is
  what "instance discrimination equals clustering" predicts, and how many rows get a
  non-negligible positive (pulling) gradient per step with and without CutMix and label
  smoothing, measured on a short run of each.

A run is an `idmm run` directory (its pre-trained backbone is analysed), a pre-training run, or a
fine-tuning run (e.g. supervised from scratch: the classifier's penultimate features).
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import models
from .api import build_method, load_run_config, load_test_data, load_train_data, resolve, runtime
from .config import Config, ConfigError
from .data.augment import MultiCrop
from .engine.checkpoint import load_checkpoint, write_json
from .eval.features import extract_features
from .export import load_model
from .plots import save_figure

LOG = logging.getLogger("idmm")


def resolve_run(run: str | Path) -> dict:
    """Where a run's representation lives: (pre-trained) backbone or fine-tuned classifier."""
    d = Path(run)
    for sub in ("pretrain", "."):
        if (d / sub / "backbone.safetensors").is_file():
            rd = (d / sub).resolve()
            return {"dir": rd, "weights": rd / "backbone.safetensors", "kind": "backbone"}
    for name in ("stage2/model.safetensors", "model.safetensors"):
        if (d / name).is_file():
            return {"dir": d.resolve(), "weights": d / name, "kind": "classifier"}
    raise ConfigError(f"{d}: no backbone.safetensors or model.safetensors; pass a finished run")


def load_representation(weights: Path, kind: str) -> torch.nn.Module:
    model = load_model(weights)
    return models.PreLogits(model).eval() if kind == "classifier" else model


def alignment_uniformity(model, images, size, mean, std, aug, rt, seed: int = 0) -> dict:
    """alignment = E ||f(x) - f(x+)||^2 over two views of each image; uniformity = log E
    exp(-2 ||f(x) - f(y)||^2) over pairs of images (both on L2-normalised features)."""
    aug = copy.deepcopy(aug)
    aug.global_crops, aug.local_crops = 2, 0
    views = MultiCrop(aug, size, size, mean, std)
    g = torch.Generator().manual_seed(seed)
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = views(images[i : i + 256], g)[0]
            with rt.autocast():
                f = model(x.to(rt.device)).float().cpu()
            feats.append(F.normalize(f, dim=1).view(2, -1, f.shape[1]))
    f = torch.cat(feats, dim=1)
    align = (f[0] - f[1]).pow(2).sum(1).mean().item()
    uniform = torch.pdist(f[0]).pow(2).mul(-2).exp().mean().log().item()
    return {"alignment": align, "uniformity": uniform, "images": int(f.shape[1])}


def head_structure(weight: torch.Tensor, labels: torch.Tensor) -> dict:
    """Class structure of instance-head rows (row i belongs to training image i)."""
    w = F.normalize(weight.float(), dim=1)
    sim = w @ w.T
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(w), dtype=torch.bool)
    nn_idx = sim.masked_fill(eye, -2).argmax(1)
    classes = int(labels.max()) + 1
    return {
        "rows": len(w),
        "nn_same_class": (labels[nn_idx] == labels).float().mean().item(),
        "chance_same_class": float(
            np.sum(np.bincount(labels.numpy(), minlength=classes) ** 2) / len(labels) ** 2
        ),  # fmt: skip
        "within_class_cos": sim[same & ~eye].mean().item(),
        "between_class_cos": sim[~same].mean().item(),
    }


def gradient_coverage(cfg: Config, steps: int, threshold: float = 0.01) -> dict:
    """How many instance-head rows get a positive gradient per step, for each CutMix /
    label-smoothing setting, measured over `steps` steps of a fresh run of each.

    Row j's gradient is sum_b (p_bj - q_bj) f_b (softmax p, soft target q): the target term -q f
    pulls it towards the crops' features, the softmax term pushes. Two counts, as fractions of
    the N rows, averaged over steps: rows whose target mass sum_b q_bj reaches `threshold` (a sole
    clean target gives 1), and rows whose net pull sum_b max(q_bj - p_bj, 0) does."""
    rt = runtime(cfg)
    data = load_train_data(cfg)
    resolve(cfg, rt, data)
    out: dict[str, Any] = {}
    for name, cm, ls in (("cutmix+smoothing", True, True), ("cutmix only", True, False),
                         ("smoothing only", False, True), ("neither", False, False)):  # fmt: skip
        c = copy.deepcopy(cfg)
        c.idmm.cutmix_p = 1.0 if cm else 0.0
        c.idmm.label_smoothing = cfg.idmm.label_smoothing if ls else 0.0
        out[name] = {**_row_coverage(c, data, rt, steps, threshold), "steps": steps}
    out["threshold"] = threshold
    return out


def _row_coverage(cfg: Config, data, rt, steps: int, threshold: float) -> dict:
    from .engine.trainer import Trainer

    cfg.epochs = steps // max(1, len(data) // cfg.batch_size) + 1  # the lr schedule's length
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, rt, len(data), len(data.classes))
    target, pull = torch.zeros(len(data)), torch.zeros(len(data))

    def on_logits(_module, _inputs, logits) -> None:  # returns None: the output is unchanged
        p = logits.detach().float().softmax(-1)

        def on_grad(grad):  # dL/dlogits = (p - q) / n for a group of n crops
            q = p - grad.float() * grad.shape[0]
            target.add_(q.clamp(min=0).sum(0).cpu())
            pull.add_((q - p).clamp(min=0).sum(0).cpu())

        logits.register_hook(on_grad)

    method.head.register_forward_hook(on_logits)
    trainer = Trainer(cfg, method, data, rt, Path(cfg.out), LOG)
    method.on_train_start(trainer.images)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    with_target, pulled = [], []
    for _ in range(steps):
        target.zero_(), pull.zero_()
        trainer.train_step(torch.randperm(len(data), generator=g)[: cfg.batch_size], rng, g)
        with_target.append((target >= threshold).float().mean().item())
        pulled.append((pull >= threshold).float().mean().item())
    return {"rows_with_target": float(np.mean(with_target)),
            "rows_pulled": float(np.mean(pulled))}  # fmt: skip


def _embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
    try:
        import umap  # optional: faster and keeps more global structure

        return umap.UMAP(random_state=seed).fit_transform(features)
    except ImportError:
        from sklearn.manifold import TSNE

        return TSNE(init="pca", random_state=seed, perplexity=30).fit_transform(features)


def _snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in sorted((run_dir / "snapshots").glob("epoch_*.safetensors")):
        found.append((int(re.findall(r"\d+", p.stem)[0]), p))
    return found


def _method(cfg: Config, kind: str) -> str:
    if kind == "backbone":
        return cfg.method
    return "fine-tuned" if cfg.finetune.init else "scratch"  # a classifier without pre-training


def analyze_run(run: str | Path, n_points: int, coverage_steps: int) -> dict:
    info = resolve_run(run)
    run_dir, cfg = load_run_config(info["dir"])
    rt = runtime(cfg)
    model = load_representation(info["weights"], info["kind"]).to(rt.device)
    pc = model.pretrained_cfg if info["kind"] == "backbone" else model.model.pretrained_cfg
    size, mean, std = pc["input_size"][-1], pc["mean"], pc["std"]
    cfg.img_size = size
    train, test, split = load_test_data(cfg, load_train_data(cfg))
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_points]
    feats = extract_features(model, test.images[pick], size, mean, std, rt)
    result: dict[str, Any] = {
        "run": str(run), "kind": info["kind"], "method": _method(cfg, info["kind"]),
        "model": cfg.model,
        "split": split, "classes": test.classes,
        "embedding": _embed(feats.numpy()).tolist(), "labels": test.labels[pick].tolist(),
        "final": alignment_uniformity(model, train.images[:1024], size, mean, std, cfg.aug, rt),
    }  # fmt: skip
    result["final"]["epoch"] = cfg.epochs if info["kind"] == "backbone" else None
    result["over_epochs"] = []
    for epoch, path in _snapshots(run_dir):
        snap = load_representation(path, "backbone").to(rt.device)
        au = alignment_uniformity(snap, train.images[:1024], size, mean, std, cfg.aug, rt)
        result["over_epochs"].append({"epoch": epoch, **au})
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if cfg.method == "idmm" and info["kind"] == "backbone" and ckpt.is_file():
        head = load_checkpoint(ckpt)["method"]["head.weight"]
        rows = load_train_data(cfg).labels  # row i = training image i, as pre-training saw them
        result["head"] = head_structure(head, rows)
        if coverage_steps:
            c = copy.deepcopy(cfg)
            c.out = str(run_dir / "analysis_tmp")
            result["gradient_coverage"] = gradient_coverage(c, coverage_steps)
    return result


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
    out = Path(out)
    results = {}
    for p in paths:
        LOG.info(f"analysing {p}")
        results[run_name(p)] = analyze_run(p, points, coverage_steps)
    plots_dir = out / "plots"
    plot_embeddings(results, plots_dir / "embedding.png")
    plot_alignment_uniformity(results, plots_dir / "alignment_uniformity.png")
    if any("gradient_coverage" in r for r in results.values()):
        plot_coverage(results, plots_dir / "head_gradient_coverage.png")
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


def plot_embeddings(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results), 4.4), dpi=110)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, r) in zip(axes, results.items()):
        e, y = np.asarray(r["embedding"]), np.asarray(r["labels"])
        for c, cls in enumerate(r["classes"]):
            m = y == c
            ax.scatter(e[m, 0], e[m, 1], s=3, color=f"C{c % 10}", label=cls)
        ax.set(title=f"{name} ({r['method']})", xticks=[], yticks=[])
    axes[-1].legend(fontsize=6, markerscale=3, loc="best")
    fig.suptitle("t-SNE of the test features, coloured by class")
    save_figure(fig, path)


def plot_alignment_uniformity(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    ax = fig.subplots()
    for i, (name, r) in enumerate(results.items()):
        pts = r["over_epochs"] or []
        if pts:
            ax.plot([p["alignment"] for p in pts], [p["uniformity"] for p in pts], "-",
                    color=f"C{i}", alpha=0.5)  # fmt: skip
            for p in pts[:: max(1, len(pts) // 4)]:
                ax.annotate(str(p["epoch"]), (p["alignment"], p["uniformity"]), fontsize=6)
        f = r["final"]
        ax.plot(f["alignment"], f["uniformity"], "o", color=f"C{i}", label=name)
    ax.set(xlabel="alignment (lower: views agree)", ylabel="uniformity (lower: spread out)",
           title="alignment and uniformity (Wang and Isola)")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_coverage(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=110)
    ax = fig.subplots()
    for i, (name, r) in enumerate(results.items()):
        cov = r.get("gradient_coverage")
        if not cov:
            continue
        names = [k for k in cov if k != "threshold"]
        y = np.arange(len(names)) + i * (len(names) + 1)
        ax.barh(
            y + 0.2,
            [100 * cov[k]["rows_with_target"] for k in names],
            0.4,
            color=f"C{i}",
            alpha=0.5,
            label=f"{name}: target mass >= {cov['threshold']}",
        )
        ax.barh(y - 0.2, [100 * cov[k]["rows_pulled"] for k in names], 0.4, color=f"C{i}",
                label=f"{name}: net pull (q > p) >= {cov['threshold']}")  # fmt: skip
        ax.set_yticks(y, names)
    ax.set(xlabel="instance-head rows per step (%)",
           title="rows with a positive gradient per step")  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, path)
