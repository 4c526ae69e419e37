"""Metrics by history length: where does each pipeline win (cold users, warm users)?

The temporal protocol reports user states instead (:data:`TEMPORAL_BUCKETS`: new users with
no history, 1–5, 6–20 and 21+ items) and the new items' figures (:func:`new_item_figures`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recfunnel.core.types import row_member, truth_matrix

Buckets = tuple[tuple[int, int | None], ...]

BUCKETS: Buckets = ((0, 5), (6, 20), (21, 50), (51, None))
TEMPORAL_BUCKETS: Buckets = ((0, 0), (1, 5), (6, 20), (21, None))
"""User states of the temporal protocol: new (no event before the cutoff), 1–5, 6–20, 21+."""


def buckets_for(protocol: str) -> Buckets:
    """The history buckets a protocol's tables use."""
    return TEMPORAL_BUCKETS if protocol == "temporal" else BUCKETS


def bucket_label(lo: int, hi: int | None) -> str:
    if hi == 0:
        return "new"
    return f"{lo}+" if hi is None else f"{lo}–{hi}"


def bucket_of(lengths: np.ndarray, buckets: Buckets = BUCKETS) -> np.ndarray:
    """Index into ``buckets`` of each history length."""
    edges = np.array([hi for _, hi in buckets[:-1]])
    return np.searchsorted(edges, np.asarray(lengths), side="left")


def by_history(
    per_user: dict[str, np.ndarray], lengths: np.ndarray, buckets: Buckets = BUCKETS
) -> dict[str, dict[str, float]]:
    """Mean of each per-user metric within each history-length bucket (plus ``n``). A
    ``new_`` metric is undefined (NaN) for users without a new item in their truth: its mean
    is over the users it is defined for."""
    idx = bucket_of(lengths, buckets)
    out: dict[str, dict[str, float]] = {}
    for b, (lo, hi) in enumerate(buckets):
        mask = idx == b
        row: dict[str, float] = {"n": float(mask.sum())}
        for m, v in per_user.items():
            vals = v[mask]
            if m.startswith("new_"):
                vals = vals[~np.isnan(vals)]
            row[m] = float(vals.mean()) if len(vals) else float("nan")
        out[bucket_label(lo, hi)] = row
    return out


def new_item_figures(
    items: np.ndarray, truth: Sequence[np.ndarray], new_items: np.ndarray, n_items: int,
    ks: Sequence[int] = (10,),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:  # fmt: skip
    """New items' figures of one ranking: means and per-user values.

    ``new_item_share``: share of all (user, truth item) pairs whose item is new.
    ``new_truth_users``: users with at least one new truth item. ``new_recall@k``: recall@k
    over each user's new truth items only, averaged over the users who have any (per user:
    NaN for the others).
    """
    is_new = np.zeros(n_items, dtype=bool)
    is_new[np.asarray(new_items, dtype=np.int64)] = True
    new_truth = [t[is_new[t]] for t in truth]
    n_new = np.array([len(t) for t in new_truth], dtype=np.float64)
    total = sum(len(t) for t in truth)
    means: dict[str, float] = {
        "new_item_share": float(n_new.sum() / total) if total else float("nan"),
        "new_truth_users": float((n_new > 0).sum()),
    }
    per_user: dict[str, np.ndarray] = {}
    hits = row_member(items, truth_matrix(new_truth, n_items)) if len(truth) else None
    has = n_new > 0
    for k in ks:
        rec = np.full(len(truth), np.nan)
        if hits is not None and has.any():
            rec[has] = hits[has, :k].sum(axis=1) / n_new[has]
        per_user[f"new_recall@{k}"] = rec
        means[f"new_recall@{k}"] = float(rec[has].mean()) if has.any() else float("nan")
    return means, per_user
