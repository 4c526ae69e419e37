"""Stage diagnostics read from a funnel's trace: coverage, exposure, discrimination,
position bias, validity and cost. Each is a plain function over arrays, so a hand-made
case checks it exactly (see tests/evaluate/test_diagnostics.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.metrics import exposure, gini, hit_matrix


def cohen_d(pos: np.ndarray, neg: np.ndarray) -> float:
    """Standardised mean difference with the pooled standard deviation."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(pos) < 2 or len(neg) < 2:
        return float("nan")
    pooled = np.sqrt(
        ((len(pos) - 1) * pos.var(ddof=1) + (len(neg) - 1) * neg.var(ddof=1))
        / (len(pos) + len(neg) - 2)
    )
    return float((pos.mean() - neg.mean()) / pooled) if pooled > 0 else 0.0


def cohen_d_ci(
    pos: np.ndarray, neg: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap percentile CI of Cohen's d (classes resampled independently)."""
    if len(pos) < 2 or len(neg) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ds = [cohen_d(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(ds, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Discrimination:
    """Do a stage's scores separate relevant from irrelevant candidates?"""

    mean_relevant: float
    mean_irrelevant: float
    cohen_d: float
    cohen_d_ci: tuple[float, float]
    auc: float
    n_relevant: int
    n_irrelevant: int


def discrimination(
    scores: np.ndarray,
    hits: np.ndarray,
    seed: int = 0,
    within_user: bool = True,
    n_boot: int = 1000,
) -> Discrimination:
    """Scores of candidates (rows = users) split by relevance.

    ``within_user`` centres each user's scores first, so an LLM that is merely more
    confident for some users does not count as separating relevant items.
    """
    pos, neg = by_relevance(scores, hits, within_user)
    auc = (
        float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))
        if len(pos) and len(neg)
        else float("nan")
    )
    return Discrimination(
        mean_relevant=float(pos.mean()) if len(pos) else float("nan"),
        mean_irrelevant=float(neg.mean()) if len(neg) else float("nan"),
        cohen_d=cohen_d(pos, neg),
        cohen_d_ci=cohen_d_ci(pos, neg, n_boot=n_boot, seed=seed),
        auc=auc,
        n_relevant=len(pos),
        n_irrelevant=len(neg),
    )


def by_relevance(scores: np.ndarray, hits: np.ndarray,
                 within_user: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The finite scores of relevant and of irrelevant candidates; ``within_user`` first
    subtracts each user's mean score (what :func:`discrimination` and its histogram use)."""
    s = np.asarray(scores, np.float64)
    valid = np.isfinite(s)
    if within_user:
        counts = valid.sum(axis=1, keepdims=True)
        means = np.where(valid, s, 0.0).sum(axis=1, keepdims=True) / np.maximum(counts, 1)
        s = s - means
    return s[valid & hits], s[valid & ~hits]


def histogram(pos: np.ndarray, neg: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Densities of relevant and irrelevant scores on shared edges (the 0.5–99.5th
    percentiles of both, so one outlier does not flatten the plot)."""
    both = np.r_[pos, neg]
    if len(both) == 0:
        return {"edges": [], "relevant": [], "irrelevant": []}
    lo, hi = np.percentile(both, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)

    def density(x: np.ndarray) -> list[float]:
        return np.histogram(np.clip(x, lo, hi), edges, density=True)[0].tolist() if len(x) else []

    return {"edges": edges.tolist(), "relevant": density(pos), "irrelevant": density(neg)}


def concentration(counts: np.ndarray, points: int = 40) -> dict[str, Any]:
    """Exposure inequality at the resolution that matters: the share of top-10 slots taken
    by the k most-shown items (k log-spaced), and the catalog Lorenz curve through the
    same breakpoints (exact there, since both come from one sorted count vector)."""
    c = np.sort(np.asarray(counts, np.float64))[::-1]
    n, total = len(c), c.sum()
    ks = np.unique(np.r_[np.round(np.logspace(0, np.log10(n), points)), (c > 0).sum()])
    ks = ks[(ks >= 1) & (ks <= n)].astype(int)
    share = np.cumsum(c)[ks - 1] / total if total else np.zeros(len(ks))
    x = np.r_[0.0, (1 - ks / n)[::-1], 1.0]
    y = np.r_[0.0, (1 - share)[::-1], 1.0]
    return {
        "concentration": {"k": ks.tolist(), "share": share.tolist(), "n_items": n},
        "lorenz": {"x": x.tolist(), "y": np.clip(y, 0, 1).tolist()},
    }


def exposure_stats(ranked: np.ndarray, n_items: int) -> dict[str, float]:
    """unique@1, unique@10, gini@10 and the share of top-10 slots the 10 most-shown items take."""
    c1, c10 = exposure(ranked, 1, n_items), exposure(ranked, 10, n_items)
    total = c10.sum()
    return {
        "unique@1": float((c1 > 0).sum()),
        "unique@10": float((c10 > 0).sum()),
        "gini@10": gini(c10),
        "top10_share@10": float(np.sort(c10)[-10:].sum() / total) if total else 0.0,
    }


def position_correlation(input_pos: np.ndarray) -> float:
    """Spearman correlation between where items were shown and where they ended up.

    1 = the stage kept its input order (pure position bias or no signal); ~0 = output
    position does not depend on input position.
    """
    rows, out_pos = np.nonzero(input_pos >= 0)
    if len(rows) < 3:
        return float("nan")
    return float(stats.spearmanr(input_pos[rows, out_pos], out_pos).statistic)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each user's top-k that two rankings have in common (1 = identical sets)."""
    overlaps = [
        len(set(x[:k][x[:k] != PAD].tolist()) & set(y[:k][y[:k] != PAD].tolist())) / k
        for x, y in zip(a, b, strict=True)
    ]
    return float(np.mean(overlaps)) if overlaps else float("nan")


def pool_recall(batch: CandidateBatch, truth: list[np.ndarray], n_items: int, k: int) -> float:
    """Recall@k of a stage's own candidate pool (NaN when the pool is shallower than k)."""
    if batch.depth < k:
        return float("nan")
    hits = hit_matrix(batch.items[:, :k], truth, n_items)
    n_rel = np.array([len(t) for t in truth])
    return float((hits.sum(axis=1) / n_rel).mean())


def latency_percentiles(per_user_seconds: np.ndarray) -> dict[str, float]:
    ms = 1000 * np.asarray(per_user_seconds, np.float64)
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
    }


def cost_per_1000(prompt_tokens: float, completion_tokens: float, price_prompt: float,
                  price_completion: float) -> float:  # fmt: skip
    """Cost of 1,000 requests given per-user tokens and prices per 1M tokens."""
    return 1000 * (prompt_tokens * price_prompt + completion_tokens * price_completion) / 1e6


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both cost (lower) and quality (higher)."""
    order = np.lexsort((-quality, cost))
    front, best = [], -np.inf
    for i in order:
        if quality[i] > best:
            front.append(int(i))
            best = quality[i]
    return np.array(front, dtype=np.int64)
