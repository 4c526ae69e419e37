"""Significance across users and seeds: paired tests, effect sizes, bootstrap CIs, Holm.

All tests are paired (the same users, or the same seeds, under two pipelines), because
user-to-user variance dwarfs pipeline differences; scipy does the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap, seeded)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or np.allclose(v, v[0]):
        m = float(v.mean()) if len(v) else float("nan")
        return m, m
    res = stats.bootstrap(
        (v,), np.mean, n_resamples=n_boot, confidence_level=1 - alpha,
        method="percentile", random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class PairedTest:
    """One pipeline against a baseline on paired values (users or seeds)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float
    effect_size: float
    """Cohen's d of the paired differences (mean / sd of the differences)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> PairedTest:
    """``a`` (pipeline) vs ``b`` (baseline), paired: t-test, Wilcoxon, d_z, bootstrap CI."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    d = a - b
    n = len(d)
    sd = d.std(ddof=1) if n > 1 else 0.0
    if n < 2 or np.allclose(d, 0):
        t_p = w_p = 1.0
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else 0.0
        w_p = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    lo, hi = bootstrap_ci(d, seed=seed)
    return PairedTest(
        n=n,
        mean_diff=float(d.mean()) if n else float("nan"),
        ci_low=lo,
        ci_high=hi,
        t_p=t_p,
        wilcoxon_p=w_p,
        effect_size=float(d.mean() / sd) if sd > 0 else 0.0,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
