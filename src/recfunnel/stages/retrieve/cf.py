"""Collaborative filtering through ``implicit``: ALS matrix factorisation and item-kNN.

Scores for a request come from its history alone (``recalculate_user``), so the same code
serves training users, cold-start users and anonymous requests. A request with an empty
history has no CF signal: it gets the popularity list and is marked as a fallback.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field
from threadpoolctl import ThreadpoolController

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.types import Request, history_matrix
from recfunnel.stages.base import FitContext, StageConfig
from recfunnel.stages.retrieve.base import Retriever
from recfunnel.stages.retrieve.popularity import PopularityRetriever

_THREADPOOLS: ThreadpoolController | None = None


def one_blas_thread() -> Any:
    """A context with BLAS on one thread. The controller is made once: finding the loaded
    BLAS libraries costs ~5 ms, more than a whole served request."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


class CFConfig(StageConfig):
    kind: Literal["cf"] = "cf"
    model: Literal["als", "itemknn", "bm25"] = Field(
        "als", description="als = implicit ALS; itemknn = cosine item-kNN; bm25 = BM25 item-kNN"
    )
    factors: int = Field(64, ge=1, description="ALS latent factors")
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, ge=1)
    alpha: float = Field(1.0, gt=0, description="ALS confidence scale on the binary matrix")
    neighbors: int = Field(200, ge=1, description="item-kNN neighbours kept per item")
    seed: int = 0


class CFRetriever(Retriever[CFConfig]):
    """Item-kNN or ALS over the binary user × item training matrix."""

    config_class = CFConfig

    def fit(self, ctx: FitContext) -> Self:
        c, train, catalog = self.config, ctx.train, ctx.catalog
        self.n_items_ = catalog.n_items
        matrix = train.to_csr("binary")
        self.model_: Any
        if c.model == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            with one_blas_thread():  # implicit checks BLAS threads on creation
                self.model_ = AlternatingLeastSquares(
                    factors=c.factors,
                    regularization=c.regularization,
                    alpha=c.alpha,
                    iterations=c.iterations,
                    random_state=c.seed,
                    num_threads=1,  # deterministic under a seed
                )
        else:
            from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

            cls = CosineRecommender if c.model == "itemknn" else BM25Recommender
            self.model_ = cls(K=c.neighbors, num_threads=1)
        with one_blas_thread(), warnings.catch_warnings():
            # implicit's own kNN normalisation hands itself a COO matrix and warns about it
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            self.model_.fit(matrix, show_progress=False)
        self.popularity_ = PopularityRetriever().fit(ctx)
        return self

    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        hist = history_matrix(requests, self.n_items_)
        has = np.diff(hist.indptr) > 0
        items = np.full((len(requests), k), PAD, dtype=np.int64)
        scores = np.full((len(requests), k), -np.inf)
        rows = np.flatnonzero(has)
        if len(rows):
            n = min(k, self.n_items_)
            with one_blas_thread():
                ids, sc = self.model_.recommend(
                    np.arange(len(rows)),
                    hist[rows],
                    N=n,
                    filter_already_liked_items=True,
                    recalculate_user=True,
                )
            ids = np.where(np.isfinite(sc) & (sc > -np.inf), ids, PAD)
            items[rows, : ids.shape[1]] = ids
            scores[rows, : ids.shape[1]] = np.where(ids == PAD, -np.inf, sc)
        if (~has).any():
            cold = [requests[int(i)] for i in np.flatnonzero(~has)]
            pop = self.popularity_.retrieve(cold, k)
            items[~has], scores[~has] = pop.items, pop.scores
        return CandidateBatch(items, scores, self.stage, fallback=~has)
