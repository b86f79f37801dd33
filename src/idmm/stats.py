"""Repeats made into claims: a mean with its 95% interval, and a paired difference with its
interval and p-value (scipy.stats), as `idmm compare seeds=K` and bench/accuracy.py report them.

A difference counts only when its 95% interval excludes 0; otherwise it is "not significant".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summary(values: list[float]) -> dict:
    """n, mean, sample std and the t-based 95% interval of the mean (None with one value)."""
    v = np.asarray(values, dtype=float)
    n, mean = len(v), float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        ci = None
    elif std == 0:
        ci = [mean, mean]
    else:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
        ci = [float(lo), float(hi)]
    return {"n": n, "mean": mean, "std": std, "ci95": ci, "values": v.tolist()}


def paired(a: list[float], b: list[float]) -> dict:
    """a - b paired by position (seed): the mean difference, its 95% interval, the paired t-test's
    p-value and whether the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = summary([x - y for x, y in zip(a, b)])
    if d["ci95"] is None:
        p = None
    elif d["std"] == 0:
        p = 1.0 if d["mean"] == 0 else 0.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    significant = d["ci95"] is not None and (d["ci95"][0] > 0 or d["ci95"][1] < 0)
    return {**d, "p": p, "significant": significant}


def pct(s: dict | None, digits: int = 2) -> str:
    """'84.60 ± 0.30' (in %) from a summary; one value shows alone."""
    if not s:
        return ""
    if s["n"] < 2:
        return f"{100 * s['mean']:.{digits}f}"
    return f"{100 * s['mean']:.{digits}f} ± {100 * s['std']:.{digits}f}"


def interval(s: dict | None, digits: int = 2) -> str:
    if not s or s["ci95"] is None:
        return ""
    lo, hi = s["ci95"]
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def difference(d: dict | None) -> str:
    """'+1.10 [0.20, 2.00], p 0.03' or '... not significant'."""
    if not d:
        return ""
    text = f"{100 * d['mean']:+.2f}"
    if d["ci95"] is None:
        return f"{text} (1 seed: no interval)"
    text += f" {interval(d)}, p {d['p']:.3f}"
    return text if d["significant"] else f"{text}, not significant"
