"""Most-popular and random retrievers: the baselines every funnel must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Request, history_matrix
from recfunnel.stages.base import FitContext, StageConfig
from recfunnel.stages.retrieve.base import Retriever, keep_top


class PopularityConfig(StageConfig):
    kind: Literal["popularity"] = "popularity"
    min_rating: float | None = Field(
        None, description="Count only interactions rated at least this (None: count all)."
    )
    recent_days: float | None = Field(
        None, gt=0, description="Count only the last N days of the training events (by "
        "their latest time, in Unix seconds; None: all time).",
    )  # fmt: skip


class PopularityRetriever(Retriever[PopularityConfig]):
    """Items ranked by how many training interactions they have (ties: lower index first)."""

    config_class = PopularityConfig

    def fit(self, ctx: FitContext) -> Self:
        train, catalog = ctx.train, ctx.catalog
        f = train.frame
        if self.config.min_rating is not None and train.has_ratings:
            f = f[f["rating"] >= self.config.min_rating]
        if self.config.recent_days is not None:
            times = train.frame["timestamp"].to_numpy()
            if len(times) == 0 or np.isnan(times).any():
                raise ConfigError("popularity.recent_days needs event times, and the training "
                                  "data has none; leave recent_days unset")  # fmt: skip
            f = f[f["timestamp"] >= times.max() - self.config.recent_days * 86_400.0]
        self.counts_ = np.bincount(f["item"].to_numpy(), minlength=catalog.n_items)
        self.order_ = np.lexsort((np.arange(catalog.n_items), -self.counts_))
        return self

    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        hist = history_matrix(requests, len(self.counts_))
        longest = int(np.diff(hist.indptr).max()) if len(requests) else 0
        head = self.order_[: k + longest]
        items = np.tile(head, (len(requests), 1))
        scores = np.tile(self.counts_[head].astype(np.float64), (len(requests), 1))
        it, sc = keep_top(items, scores, hist, k)
        return CandidateBatch(it, sc, self.stage)


class RandomConfig(StageConfig):
    kind: Literal["random"] = "random"
    seed: int = 0


class RandomRetriever(Retriever[RandomConfig]):
    """Uniformly random items: the floor. Each user's list depends only on the seed and
    that user (not on who else is in the batch), so batches can be split freely."""

    config_class = RandomConfig

    def fit(self, ctx: FitContext) -> Self:
        self.n_items_ = ctx.catalog.n_items
        return self

    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        hist = history_matrix(requests, self.n_items_)
        longest = int(np.diff(hist.indptr).max()) if len(requests) else 0
        m = min(k + longest, self.n_items_)
        items = np.empty((len(requests), m), dtype=np.int64)
        for i, r in enumerate(requests):  # one draw per user, so lists don't depend on batching
            anon = r.user is None
            rng = np.random.default_rng([self.config.seed, int(anon), r.user or 0])
            items[i] = rng.choice(self.n_items_, size=m, replace=False)
        scores = np.tile(-np.arange(m, dtype=np.float64), (len(requests), 1))
        it, sc = keep_top(items, scores, hist, k)
        return CandidateBatch(it, sc, self.stage)
