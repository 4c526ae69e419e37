"""Metrics by history length: where does each pipeline win (cold users, warm users)?"""

from __future__ import annotations

import numpy as np

BUCKETS = ((0, 5), (6, 20), (21, 50), (51, None))


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}–{hi}"


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Index into :data:`BUCKETS` of each history length."""
    edges = np.array([hi for _, hi in BUCKETS[:-1]])
    return np.searchsorted(edges, np.asarray(lengths), side="left")


def by_history(per_user: dict[str, np.ndarray], lengths: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean of each per-user metric within each history-length bucket (plus ``n``)."""
    idx = bucket_of(lengths)
    out: dict[str, dict[str, float]] = {}
    for b, (lo, hi) in enumerate(BUCKETS):
        mask = idx == b
        row: dict[str, float] = {"n": float(mask.sum())}
        for m, v in per_user.items():
            row[m] = float(v[mask].mean()) if mask.any() else float("nan")
        out[bucket_label(lo, hi)] = row
    return out
