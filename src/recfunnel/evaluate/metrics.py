"""Ranking metrics addressed by name (``"ndcg@10"``), computed over many users at once.

Accuracy metrics (hr, recall, precision, ndcg, mrr, map) use binary relevance and are
computed per user from that pipeline's own ranking; beyond-accuracy metrics describe the
whole set of lists: ``unique`` (distinct items in all top-K lists), ``coverage`` (that as a
share of the catalog), ``gini`` (concentration of top-K exposure over the whole catalog;
0 = every item shown equally, (n-1)/n = one item takes all), ``top10share`` (share of
top-K slots taken by the 10 most-shown items) and ``novelty`` (mean self-information
-log2 p(i) of recommended items, p(i) = share of training users who interacted with i).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recfunnel.errors import ConfigError
from recfunnel.types import PAD, row_member, truth_matrix


@dataclass
class RankingView:
    """The arrays every metric reads, computed once per evaluation."""

    ranked: np.ndarray  # [n_users, depth] item indices, PAD-padded
    hits: np.ndarray  # [n_users, depth] bool: is ranked[u, j] relevant to u
    n_relevant: np.ndarray  # [n_users] size of each truth set
    n_items: int
    item_counts: np.ndarray | None = None  # training interactions per item (novelty)
    n_train_users: int | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict)


def hit_matrix(ranked: np.ndarray, truth: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """``hits[u, j]`` = ranked[u, j] is in truth[u]; one vectorised set lookup, no loops."""
    return row_member(ranked, truth_matrix(truth, n_items))


def _hr(v: RankingView, k: int) -> np.ndarray:
    return np.asarray(v.hits[:, :k].any(axis=1), dtype=np.float64)


def _recall(v: RankingView, k: int) -> np.ndarray:
    return v.hits[:, :k].sum(axis=1) / v.n_relevant


def _precision(v: RankingView, k: int) -> np.ndarray:
    return v.hits[:, :k].sum(axis=1) / k


def _ndcg(v: RankingView, k: int) -> np.ndarray:
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    h = v.hits[:, :k]
    dcg = (h * disc[: h.shape[1]]).sum(axis=1)
    ideal = np.cumsum(disc)[np.minimum(v.n_relevant, k) - 1]
    return dcg / ideal


def _mrr(v: RankingView, k: int) -> np.ndarray:
    h = v.hits[:, :k]
    first = h.argmax(axis=1)
    return np.where(h.any(axis=1), 1.0 / (first + 1), 0.0)


def _map(v: RankingView, k: int) -> np.ndarray:
    h = v.hits[:, :k].astype(np.float64)
    prec = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    return (prec * h).sum(axis=1) / np.minimum(v.n_relevant, k)


def _novelty(v: RankingView, k: int) -> np.ndarray:
    if v.item_counts is None or not v.n_train_users:
        raise ConfigError("novelty needs training item counts (pass item_counts to evaluate)")
    p = np.maximum(v.item_counts, 1) / v.n_train_users
    info = -np.log2(np.minimum(p, 1.0))
    top = v.ranked[:, :k]
    valid = top != PAD
    vals = np.where(valid, info[np.where(valid, top, 0)], 0.0)
    return vals.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def exposure(ranked: np.ndarray, k: int, n_items: int) -> np.ndarray:
    """How many users' top-k lists show each item."""
    top = ranked[:, :k]
    return np.bincount(top[top != PAD], minlength=n_items)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal, (n-1)/n = one holds all)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def _unique(v: RankingView, k: int) -> float:
    return float((exposure(v.ranked, k, v.n_items) > 0).sum())


def _coverage(v: RankingView, k: int) -> float:
    return _unique(v, k) / v.n_items


def _gini(v: RankingView, k: int) -> float:
    return gini(exposure(v.ranked, k, v.n_items))


def _top10share(v: RankingView, k: int) -> float:
    counts = exposure(v.ranked, k, v.n_items)
    total = counts.sum()
    return float(np.sort(counts)[-10:].sum() / total) if total else 0.0


PER_USER: dict[str, Callable[[RankingView, int], np.ndarray]] = {
    "hr": _hr,
    "recall": _recall,
    "precision": _precision,
    "ndcg": _ndcg,
    "mrr": _mrr,
    "map": _map,
    "novelty": _novelty,
}
AGGREGATE: dict[str, Callable[[RankingView, int], float]] = {
    "unique": _unique,
    "coverage": _coverage,
    "gini": _gini,
    "top10share": _top10share,
}
_NAME = re.compile(r"^([a-z0-9_]+)@(\d+)$")


def parse_metric(name: str) -> tuple[str, int]:
    """'ndcg@10' -> ('ndcg', 10); a clear error for anything else."""
    m = _NAME.match(name.strip().lower())
    if not m or (m.group(1) not in PER_USER and m.group(1) not in AGGREGATE):
        known = ", ".join(sorted([*PER_USER, *AGGREGATE]))
        raise ConfigError(f"unknown metric {name!r}: use NAME@K with NAME one of {known}")
    k = int(m.group(2))
    if k < 1:
        raise ConfigError(f"metric {name!r}: K must be >= 1")
    return m.group(1), k


def depth_needed(names: Sequence[str]) -> int:
    """The ranking depth a list of metrics reads (the largest K)."""
    return max((parse_metric(n)[1] for n in names), default=10)


@dataclass
class MetricResult:
    """Means over users (or set-level values) and the per-user arrays behind them."""

    means: dict[str, float]
    per_user: dict[str, np.ndarray]


def evaluate(
    ranked: np.ndarray,
    truth: Sequence[np.ndarray],
    names: Sequence[str],
    n_items: int,
    *,
    item_counts: np.ndarray | None = None,
    n_train_users: int | None = None,
) -> MetricResult:
    """Compute named metrics of ``ranked`` ([users, depth] item indices) against ``truth``."""
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(truth):
        raise ValueError(f"ranked has shape {ranked.shape} but there are {len(truth)} truth sets")
    n_rel = np.fromiter((len(t) for t in truth), dtype=np.int64, count=len(truth))
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} users have no relevant item to find")
    view = RankingView(
        ranked, hit_matrix(ranked, truth, n_items), n_rel, n_items, item_counts, n_train_users
    )
    means: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    for name in names:
        base, k = parse_metric(name)
        if base in PER_USER:
            vals = PER_USER[base](view, k)
            per_user[name] = vals
            means[name] = float(vals.mean()) if len(vals) else 0.0
        else:
            means[name] = AGGREGATE[base](view, k)
    return MetricResult(means, per_user)
