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
from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from recfunnel.core.errors import ConfigError
from recfunnel.core.types import PAD, row_member, truth_matrix


@dataclass
class RankingView:
    """The arrays every metric reads, computed once per evaluation."""

    ranked: np.ndarray  # [n_users, depth] item indices, PAD-padded
    hits: np.ndarray  # [n_users, depth] bool: is ranked[u, j] relevant to u
    n_relevant: np.ndarray  # [n_users] size of each truth set
    n_items: int
    item_counts: np.ndarray | None = None  # training interactions per item (novelty)
    n_train_users: int | None = None
    item_genres: np.ndarray | None = None  # [n_items, n_genres] 0/1 (diversity metrics)
    item_groups: np.ndarray | None = None  # [n_items] 0/1 fairness group (mad)
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


def _genres(v: RankingView, name: str) -> np.ndarray:
    if v.item_genres is None:
        raise ConfigError(f"{name} needs item genres (pass item_genres to evaluate)")
    return v.item_genres


def _top_genres(v: RankingView, k: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """[users, k, genres] genre vectors of the top-k (zero for padding) and the valid mask."""
    top = v.ranked[:, :k]
    valid = top != PAD
    g = _genres(v, name)[np.where(valid, top, 0)] * valid[..., None]
    return g, valid


ALPHA = 0.5  # α of α-NDCG: how much a genre already shown is worth again


def _alpha_dcg(g: np.ndarray, k: int) -> float:
    """α-DCG of one list of genre vectors [n, genres], first k positions."""
    seen = np.zeros(g.shape[1])
    total = 0.0
    for r in range(min(k, len(g))):
        total += float((g[r] * (1 - ALPHA) ** seen).sum()) / np.log2(r + 2)
        seen += g[r]
    return total


def _alpha_ideal(g: np.ndarray, k: int) -> float:
    """α-DCG of the greedy best order of the same items (the usual approximation)."""
    seen = np.zeros(g.shape[1])
    left = list(range(len(g)))
    total = 0.0
    for r in range(min(k, len(g))):
        gains = [float((g[i] * (1 - ALPHA) ** seen).sum()) for i in left]
        best = left.pop(int(np.argmax(gains)))
        total += max(gains) / np.log2(r + 2)
        seen += g[best]
    return total


def _alpha_ndcg(v: RankingView, k: int) -> np.ndarray:
    """α-NDCG@k with genres as subtopics (Clarke et al. 2008): each genre's gain decays by
    (1−α) every time it was shown before; the ideal is the greedy best order of the
    user's whole ranked list (so with a depth-20 list, the reranker's 20 candidates)."""
    g_all, _ = _top_genres(v, v.ranked.shape[1], "alpha_ndcg")
    out = np.zeros(len(v.ranked))
    for u in range(len(v.ranked)):
        ideal = _alpha_ideal(g_all[u], k)
        out[u] = _alpha_dcg(g_all[u], k) / ideal if ideal > 0 else 0.0
    return out


def _ild(v: RankingView, k: int) -> np.ndarray:
    """Intra-list diversity: mean pairwise cosine distance of the top-k's genre vectors."""
    g, valid = _top_genres(v, k, "ild")
    norm = np.linalg.norm(g, axis=2, keepdims=True)
    unit = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
    dist = 1.0 - unit @ unit.transpose(0, 2, 1)
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(g.shape[1], dtype=bool)[None]
    n_pairs = pair.sum(axis=(1, 2))
    return np.where(n_pairs > 0, (dist * pair).sum(axis=(1, 2)) / np.maximum(n_pairs, 1), 0.0)


def _genre_coverage(v: RankingView, k: int) -> np.ndarray:
    """Share of the catalog's genres that appear in the top-k."""
    g, _ = _top_genres(v, k, "genre_coverage")
    return np.asarray((g.max(axis=1) > 0).sum(axis=1) / g.shape[2], dtype=np.float64)


def _mad(v: RankingView, k: int) -> np.ndarray:
    """LLM4Rerank's MAD: list positions mapped linearly from 1 (top) to 0 (k-th), then
    |mean of group 1 − mean of group 0|; NaN for a list holding one group only."""
    if v.item_groups is None:
        raise ConfigError("mad needs item groups (pass item_groups to evaluate)")
    top = v.ranked[:, :k]
    valid = top != PAD
    n = valid.sum(axis=1, keepdims=True)
    score = 1.0 - np.arange(top.shape[1])[None, :] / np.maximum(n - 1, 1)
    grp = v.item_groups[np.where(valid, top, 0)]
    out = np.full(len(top), np.nan)
    for u in range(len(top)):
        a = score[u][valid[u] & (grp[u] == 1)]
        b = score[u][valid[u] & (grp[u] == 0)]
        if len(a) and len(b):
            out[u] = abs(a.mean() - b.mean())
    return out


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
    "alpha_ndcg": _alpha_ndcg,
    "ild": _ild,
    "genre_coverage": _genre_coverage,
    "mad": _mad,
}
BARE_K = {"mad": 20}
"""Metrics that may be named without @K: MAD over LLM4Rerank's 20-item list."""
AGGREGATE: dict[str, Callable[[RankingView, int], float]] = {
    "unique": _unique,
    "coverage": _coverage,
    "gini": _gini,
    "top10share": _top10share,
}
_NAME = re.compile(r"^([a-z0-9_]+)@(\d+)$")


def parse_metric(name: str) -> tuple[str, int]:
    """'ndcg@10' -> ('ndcg', 10); a clear error for anything else."""
    bare = name.strip().lower()
    if bare in BARE_K:
        return bare, BARE_K[bare]
    m = _NAME.match(bare)
    head, at, k_text = bare.partition("@")
    if not m and at and (head in PER_USER or head in AGGREGATE):  # a known metric, a bad K
        raise ConfigError(f"metric {name!r}: K must be a whole number >= 1, not {k_text!r}")
    if not m or (m.group(1) not in PER_USER and m.group(1) not in AGGREGATE):
        known = ", ".join(sorted([*PER_USER, *AGGREGATE]))
        raise ConfigError(f"unknown metric {name!r}: use NAME@K with NAME one of {known}")
    k = int(m.group(2))
    if k < 1:
        raise ConfigError(f"metric {name!r}: K must be >= 1")
    return m.group(1), k


def _checked(name: str) -> str:
    try:
        parse_metric(name)
    except ConfigError as exc:  # pydantic reports a ValueError under the field's name
        raise ValueError(str(exc)) from None
    return name


MetricName = Annotated[str, AfterValidator(_checked)]
"""A metric name in a config (``ndcg@10``), checked when the config is read."""


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
    item_genres: np.ndarray | None = None,
    item_groups: np.ndarray | None = None,
) -> MetricResult:
    """Compute named metrics of ``ranked`` ([users, depth] item indices) against ``truth``.

    A per-user metric undefined for some users (``mad`` of a one-group list) is NaN there
    and its mean is over the users where it is defined."""
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(truth):
        raise ValueError(f"ranked has shape {ranked.shape} but there are {len(truth)} truth sets")
    n_rel = np.fromiter((len(t) for t in truth), dtype=np.int64, count=len(truth))
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} users have no relevant item to find")
    view = RankingView(
        ranked, hit_matrix(ranked, truth, n_items), n_rel, n_items, item_counts, n_train_users,
        item_genres, item_groups,
    )  # fmt: skip
    means: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    for name in names:
        base, k = parse_metric(name)
        if base in PER_USER:
            vals = PER_USER[base](view, k)
            per_user[name] = vals
            ok = np.isfinite(vals)
            means[name] = float(vals[ok].mean()) if ok.any() else float("nan")
        else:
            means[name] = AGGREGATE[base](view, k)
    return MetricResult(means, per_user)


score = evaluate
"""``recfunnel.score``: :func:`evaluate` under the name the top-level API gives it (the
``recfunnel.evaluate`` sub-package takes the other one)."""
