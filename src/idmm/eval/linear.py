"""Linear probe on frozen, precomputed features, with the learning rate picked on held-out data.

Features are z-scored per dimension (mean/std of the features the head is fitted on), not
L2-normalised first: the norm can carry class information a linear head may use (the cosine k-NN
already measures the normalised view), and z-scoring alone makes one lr grid fit any backbone's
feature scale. Every lr of the grid is trained in one pass as K stacked, independent heads.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..config_schema import DEFAULT_LRS  # (why these: there)


def _stats(fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the features a head is fitted on (a constant dim stays 0)."""
    return fit.mean(0), fit.std(0, correction=0).clamp_min(1e-6)


def _standardise(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """z-score with statistics of `fit` only, so no test (or validation) data shapes the inputs."""
    mean, std = _stats(fit)
    return [(t - mean) / std for t in (fit, *others)]


def stratified_split(
    y: torch.Tensor, val_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted CPU (train_idx, val_idx). Each class holds out round(val_fraction * n_c) samples,
    at least 1 and at most n_c - 1 when it has >= 2, none when it has 1: so the selection sees
    every class, and every class is still trained on."""
    y, tr, va = y.cpu(), [], []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = min(max(int(val_fraction * len(idx) + 0.5), 1), len(idx) - 1)
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def _logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, K, C) logits of all K heads in one GEMM; w is stored (D, K, C), b (K, C)."""
    d, k, c = w.shape
    return torch.addmm(b.reshape(-1), x, w.reshape(d, k * c)).view(len(x), k, c)


def _ce_grad(x, y, w, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of sum_k mean_i CE(x_i W_k + b_k, y_i) w.r.t. w (D, K, C) and b (K, C).

    Written out (softmax - onehot) rather than by autograd, which costs more than the arithmetic
    at these sizes. Logits more than 60 below a row's max are clamped: once a head fits its data
    its probabilities would otherwise reach e^-100, denormal floats that can slow x86 arithmetic
    many times over; an e^-60 floor changes no gradient at float32 precision.
    """
    z = _logits(x, w, b)
    z = (z - z.amax(-1, keepdim=True)).clamp_min_(-60.0).exp_()
    z /= z.sum(-1, keepdim=True)
    z[torch.arange(len(y), device=y.device), :, y] -= 1.0
    z /= len(y)
    return (x.T @ z.view(len(y), -1)).view(w.shape), z.sum(0)


@torch.no_grad()
def train_heads(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: tuple[float, ...], epochs: int,
    batch_size: int, weight_decay: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Train one softmax-regression head per lr in a single pass; returns W (K, D, C), b (K, C).

    Loss = sum of the K mean cross-entropies, so head k's gradient depends on head k only. The
    update is torch's SGD (momentum 0.9, dampening 0, weight decay on W only) written out with a
    per-head lr tensor and a per-step cosine schedule. Init and shuffling come from `seed` and
    are shared by all heads, so each head trains as it would alone. W is kept as (D, K, C) so
    that the forward pass of all heads is one matrix product.
    """
    n, d = x.shape
    k = len(lrs)
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, 1, num_classes, generator=g) * 0.01
    w = w0.expand(d, k, num_classes).contiguous().to(x.device)
    b = torch.zeros(k, num_classes, device=x.device)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    lr = torch.tensor(lrs, dtype=x.dtype, device=x.device)
    total, step = epochs * math.ceil(n / batch_size), 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(x.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            gw, gb = _ce_grad(x[idx], y[idx], w, b)
            scale = lr * (0.5 * (1 + math.cos(math.pi * step / total)))
            vw.mul_(0.9).add_(gw).add_(w, alpha=weight_decay)
            vb.mul_(0.9).add_(gb)
            w.sub_(scale[:, None] * vw)
            b.sub_(scale[:, None] * vb)
            step += 1
    return w.permute(1, 0, 2), b


def _check(train_f, train_y, test_f, test_y, num_classes, lrs, epochs, batch_size, val_fraction):
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        shapes = f"{tuple(train_f.shape)}, {tuple(test_f.shape)}"
        raise ValueError(f"train/test features must be (N, D) with the same D: got {shapes}")
    for f, y, name in ((train_f, train_y, "train"), (test_f, test_y, "test")):
        if y.ndim != 1 or len(y) != len(f):
            raise ValueError(f"{name} labels {tuple(y.shape)} do not match {tuple(f.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes})")
    if len(train_y) < 2 or len(test_y) < 1:
        raise ValueError(f"need >= 2 train and >= 1 test samples: got {len(train_y)}/{len(test_y)}")
    if not lrs or min(lrs) <= 0 or len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct positive values: got {lrs}")
    if epochs < 1 or batch_size < 1 or not 0 < val_fraction < 1:
        raise ValueError("need epochs >= 1, batch_size >= 1 and 0 < val_fraction < 1")


def _grid_edge(lrs: tuple[float, ...], best_lr: float, val: dict[str, float]) -> str | None:
    """'largest'/'smallest' when the chosen lr ends the grid and beats its neighbour, so the
    optimum may lie beyond it (a wider `linear.lrs` could probe better); None otherwise. A tie
    with the neighbour (a flat grid) is no sign of a cut-off optimum."""
    if len(lrs) < 2:
        return None
    grid = sorted(lrs)
    for end, inner, name in ((grid[-1], grid[-2], "largest"), (grid[0], grid[1], "smallest")):
        if best_lr == end and val[str(end)] > val[str(inner)]:
            return name
    return None


def edge_warning(probe: dict) -> str | None:
    """The log line for a probe whose chosen lr ends its grid (`best_lr_at_edge`), else None;
    every caller of linear_probe that reports its lr logs it (eval linear, LP-FT's head)."""
    if not probe["best_lr_at_edge"]:
        return None
    return (f"warning: the chosen lr {probe['best_lr']} is the grid's {probe['best_lr_at_edge']} "
            "and beats its neighbour: a better lr may lie beyond the grid; widen it, e.g. "
            "linear.lrs=[0.1,0.3,1,3,10]")  # fmt: skip


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """One intra-op thread on CPU, restored after. These matrices are too small to gain from
    threads, and OpenMP's spinning workers make a busy machine pay dearly: on a 2-core box
    shared with other jobs, 2 threads took 59 s where 1 thread took 0.8 s."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def linear_probe(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, lrs: tuple[float, ...] = DEFAULT_LRS, epochs: int = 100,
    batch_size: int = 256, weight_decay: float = 0.0, val_fraction: float = 0.2, seed: int = 0,
    device: str | torch.device = "cpu", val_f: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
) -> dict:  # fmt: skip
    """Pick the lr on validation features, then test the chosen head once.

    With `val_f`/`val_y` (a validation split) every lr trains on all training features and the
    best on validation is tested. Without them, the lr is chosen on a stratified `val_fraction`
    of the training features and retrained on all of them. Fractions in [0, 1]; `predictions` (a
    LongTensor on the CPU) is for a confusion matrix; `head` = (weight (C, D), bias (C,)) of the
    final head on the raw (unstandardised) features.
    """
    lrs = tuple(float(lr) for lr in lrs)
    _check(train_f, train_y, test_f, test_y, num_classes, lrs, epochs, batch_size, val_fraction)
    device = torch.device(device)
    train_f, test_f = train_f.to(device, torch.float32), test_f.to(device, torch.float32)
    train_y, test_y = train_y.to(device, torch.long), test_y.to(device, torch.long)
    hyper = dict(num_classes=num_classes, epochs=epochs, batch_size=batch_size)
    hyper.update(weight_decay=weight_decay)
    with _one_cpu_thread(device), torch.no_grad():
        if val_f is not None and len(val_f):
            fit_f, fit_y = train_f, train_y
            sel_f, sel_y = val_f.to(device, torch.float32), val_y.to(device, torch.long)
        else:
            tr, va = stratified_split(train_y, val_fraction, torch.Generator().manual_seed(seed))
            if len(va) == 0:
                raise ValueError("no class has >= 2 training samples: nothing to hold out")
            fit_f, fit_y, sel_f, sel_y = train_f[tr], train_y[tr], train_f[va], train_y[va]
        x_fit, x_sel = _standardise(fit_f, sel_f)
        w, b = train_heads(x_fit, fit_y, lrs=lrs, seed=seed + 1, **hyper)
        hit = _logits(x_sel, w.transpose(0, 1), b).argmax(2) == sel_y[:, None]
        acc = hit.float().mean(0)
        acc[~torch.isfinite(w).all(2).all(1)] = 0.0  # a diverged head never wins
        val = {str(lr): float(a) for lr, a in zip(lrs, acc.tolist())}
        best_lr = max(lrs, key=lambda lr: (val[str(lr)], -lr))  # ties go to the smaller lr
        if fit_f is train_f:  # the chosen head already trained on every training feature
            k = lrs.index(best_lr)
            w, b = w[k : k + 1], b[k : k + 1]
        else:
            w, b = train_heads(_standardise(train_f)[0], train_y, lrs=(best_lr,), seed=seed + 2,
                               **hyper)  # fmt: skip
        mean, std = _stats(train_f)
        x_te = (test_f - mean) / std
        topk = _logits(x_te, w.transpose(0, 1), b)[:, 0].topk(min(5, num_classes), dim=1).indices
        # the final head in raw feature space (the same standardisation folded in)
        w_raw = w[0] / std[:, None]  # (D, C)
        head = (w_raw.T.cpu(), (b[0] - mean @ w_raw).cpu())
    pred = topk[:, 0]
    return {
        "head": head,
        "top1": float((pred == test_y).float().mean()),
        "top5": float((topk == test_y[:, None]).any(1).float().mean()),
        "best_lr": best_lr,
        "best_lr_at_edge": _grid_edge(lrs, best_lr, val),
        "val_top1": val[str(best_lr)],
        "val_top1_by_lr": val,
        "lr_chosen_on": "val" if fit_f is train_f else f"{val_fraction:.0%} of train",
        "epochs": epochs,
        "train_images": len(train_y),
        "test_images": len(test_y),
        "predictions": pred.cpu(),
    }
