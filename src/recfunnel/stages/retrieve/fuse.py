"""Hybrid fusion of candidate pools: reciprocal-rank fusion and weighted score fusion.

Pools are merged per request with one sparse matrix (duplicates summed by scipy), so fusion
costs the same whether 2 or 20 pools are merged and has no per-item Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Request
from recfunnel.stages.base import FitContext, Stage, StageConfig, Trace


class FusionConfig(StageConfig):
    """Merge every retrieval pool before this stage into one list."""

    kind: Literal["fuse"] = "fuse"
    method: Literal["rrf", "weighted"] = "rrf"
    weights: list[float] | None = Field(
        None, description="One weight per pool, in the order of the retrievers (default: equal)."
    )
    rrf_k: float = Field(60.0, ge=0, description="RRF's rank offset: score = w / (rrf_k + rank)")

    @model_validator(mode="after")
    def _weights_positive(self) -> FusionConfig:
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise ValueError("fusion weights must be >= 0")
        return self


def _contributions(batch: CandidateBatch, method: str, rrf_k: float) -> np.ndarray:
    """Each candidate's contribution before weighting: 1/(rrf_k + rank) or a min-max score."""
    valid = batch.items != PAD
    if method == "rrf":
        ranks = np.arange(1, batch.depth + 1, dtype=np.float64)
        return np.where(valid, 1.0 / (rrf_k + ranks), 0.0)
    s = np.where(valid, batch.scores, np.nan)
    lo = np.nanmin(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True)
    hi = np.nanmax(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    # the pool's worst item still counts a little, so "in the pool" beats "absent"
    return np.where(valid, 0.01 + 0.99 * (s - lo) / span, 0.0)


def _top_per_row(m: sp.coo_matrix, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` entries of each sparse row (ties: lower item first), by one global sort."""
    order = np.lexsort((m.col, -m.data, m.row))
    r, c, v = m.row[order], m.col[order], m.data[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(n))[r]
    keep = rank < k
    items = np.full((n, k), PAD, dtype=np.int64)
    scores = np.full((n, k), -np.inf)
    items[r[keep], rank[keep]] = c[keep]
    scores[r[keep], rank[keep]] = v[keep]
    return items, scores


def fuse(
    batches: Sequence[CandidateBatch], config: FusionConfig, k: int, n_items: int
) -> CandidateBatch:
    """Merge pools into one ranking of depth ``k`` per request."""
    if not batches:
        raise ConfigError("fusion needs at least one candidate pool")
    n = len(batches[0])
    if any(len(b) != n for b in batches):
        raise ValueError("all pools must answer the same requests")
    weights = config.weights or [1.0] * len(batches)
    if len(weights) != len(batches):
        raise ConfigError(f"fusion.weights has {len(weights)} values for {len(batches)} retrievers")
    rows, cols, vals = [], [], []
    for b, w in zip(batches, weights, strict=True):
        contrib = _contributions(b, config.method, config.rrf_k) * w
        r, c = np.nonzero(b.items != PAD)
        rows.append(r)
        cols.append(b.items[r, c])
        vals.append(contrib[r, c])
    merged = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_items)
    )
    merged.sum_duplicates()
    items, scores = _top_per_row(merged.tocoo(), n, k)
    fallback = np.logical_and.reduce(
        [b.fallback if b.fallback is not None else np.zeros(n, bool) for b in batches]
    )
    return CandidateBatch(items, scores, f"fuse:{config.method}", fallback=fallback)


class Fuse(Stage[FusionConfig]):
    """The fusion stage: the pools of the retrievers before it, merged at the run's depth."""

    family = "fuse"
    mode = "list"
    config_class = FusionConfig

    @property
    def name(self) -> str:
        return self.config.name or f"fuse:{self.config.method}"

    def fit(self, ctx: FitContext) -> Fuse:
        self.n_items_ = ctx.catalog.n_items
        return self

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        return fuse(list(trace.pools.values()), self.config, trace.depth, self.n_items_)
