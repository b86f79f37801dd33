"""The paper's analyses of a representation (what `idmm analyze` computes and plots):

- a 2-D t-SNE of the test features, coloured by class, one panel per run;
- alignment and uniformity (Wang and Isola, 2020) of the L2-normalised features of two augmented
  views, for the final backbone and for each snapshot (`snapshot_every=N` during pre-training);
- for IDMM runs, the instance head: the class structure of its learned rows (does each row's
  nearest row belong to an image of the same class? within- vs between-class cosine), which is
  what "instance discrimination equals clustering" predicts, and how many rows get a
  non-negligible positive (pulling) gradient per step with and without CutMix and label
  smoothing, measured on a short run of each.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .builders import build_method
from .data.augment import MultiCrop
from .data.cache import CachedData
from .engine.distributed import Runtime
from .engine.trainer import Trainer
from .plots import save_figure
from .rundir import RunDir

LOG = logging.getLogger("idmm")


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


def gradient_coverage(cfg: Any, data: CachedData, rt: Runtime, steps: int,
                      threshold: float = 0.01) -> dict:  # fmt: skip
    """How many instance-head rows get a positive gradient per step, for each CutMix /
    label-smoothing setting, measured over `steps` steps of a fresh run of each.

    Row j's gradient is sum_b (p_bj - q_bj) f_b (softmax p, soft target q): the target term -q f
    pulls it towards the crops' features, the softmax term pushes. Two counts, as fractions of
    the N rows, averaged over steps: rows whose target mass sum_b q_bj reaches `threshold` (a sole
    clean target gives 1), and rows whose net pull sum_b max(q_bj - p_bj, 0) does."""
    out: dict[str, Any] = {}
    for name, cm, ls in (("cutmix+smoothing", True, True), ("cutmix only", True, False),
                         ("smoothing only", False, True), ("neither", False, False)):  # fmt: skip
        c = copy.deepcopy(cfg)
        c.idmm.cutmix_p = 1.0 if cm else 0.0
        c.idmm.label_smoothing = cfg.idmm.label_smoothing if ls else 0.0
        out[name] = {**_row_coverage(c, data, rt, steps, threshold), "steps": steps}
    out["threshold"] = threshold
    return out


def _row_coverage(cfg: Any, data: CachedData, rt: Runtime, steps: int, threshold: float) -> dict:
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
    trainer = Trainer(cfg, method, data, rt, RunDir(cfg.out), LOG)
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


def embed_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    try:
        import umap  # optional: faster and keeps more global structure

        return umap.UMAP(random_state=seed).fit_transform(features)
    except ImportError:
        from sklearn.manifold import TSNE

        return TSNE(init="pca", random_state=seed, perplexity=30).fit_transform(features)


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
