"""Intervals and paired tests (idmm.stats) against scipy's and hand arithmetic."""

import math

import pytest
from scipy import stats as sst

from idmm import stats


def test_summary_interval_is_the_t_interval():
    s = stats.summary([0.80, 0.82, 0.84])
    assert s["mean"] == pytest.approx(0.82) and s["std"] == pytest.approx(0.02)
    half = sst.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)  # 4.303 x 0.0115
    assert s["ci95"] == pytest.approx([0.82 - half, 0.82 + half])
    assert stats.summary([0.5])["ci95"] is None and stats.pct(stats.summary([0.5])) == "50.00"


def test_paired_difference_and_significance():
    a, b = [0.85, 0.86, 0.84], [0.80, 0.82, 0.81]
    d = stats.paired(a, b)
    assert d["mean"] == pytest.approx(0.04) and d["significant"]
    assert d["p"] == pytest.approx(sst.ttest_rel(a, b).pvalue)
    assert "not significant" not in stats.difference(d)
    noisy = stats.paired([0.85, 0.80, 0.86], [0.84, 0.83, 0.82])
    assert not noisy["significant"] and noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert stats.difference(noisy).endswith("not significant")
    assert "no interval" in stats.difference(stats.paired([0.9], [0.8]))
    with pytest.raises(ValueError):
        stats.paired([1.0], [1.0, 2.0])
