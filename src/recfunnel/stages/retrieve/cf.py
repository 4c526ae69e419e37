"""Collaborative filtering: ALS and item-kNN through ``implicit``, EASE and RP3β in numpy.

Scores for a request come from its history alone (implicit's ``recalculate_user``; EASE
and RP3β score ``history @ W``), so the same code serves training users, cold-start users
and anonymous requests. A request with no CF signal (an empty history, or for EASE and
RP3β no history item the model was trained on) gets the popularity list and is marked as
a fallback.

Every model can train on the liked events alone (``min_rating``). A list in place of a
value of ``min_rating``, ``ease_lambda``, ``rp3_alpha`` or ``rp3_beta`` is a grid:
:meth:`CFRetriever.tune` fits each point on the training split and keeps the one whose
``tune_metric`` is best on validation users (never test users). Until it is tuned a grid
stands for its first value; a refit by the funnel (a ranker's simulated lists) uses the
tuned choice (:meth:`CFRetriever.refit_config`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator
from threadpoolctl import ThreadpoolController

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError, RecfunnelError
from recfunnel.core.metrics import MetricName, depth_needed, evaluate
from recfunnel.core.types import EvalSet, Interactions, Request, history_matrix
from recfunnel.stages.base import FitContext, StageConfig, TuneContext
from recfunnel.stages.retrieve.base import Retriever
from recfunnel.stages.retrieve.item_models import (
    ItemModel,
    check_ease_size,
    ease_weights,
    rp3beta_weights,
)
from recfunnel.stages.retrieve.popularity import PopularityRetriever

_THREADPOOLS: ThreadpoolController | None = None

GRIDS: dict[str, tuple[str, ...]] = {
    "als": ("min_rating",),
    "itemknn": ("min_rating",),
    "bm25": ("min_rating",),
    "ease": ("ease_lambda", "min_rating"),
    "rp3beta": ("rp3_alpha", "rp3_beta", "min_rating"),
}
"""The settings each model can tune on validation users (a list in the config: a grid)."""


def one_blas_thread() -> Any:
    """A context with BLAS on one thread. The controller is made once: finding the loaded
    BLAS libraries costs ~5 ms, more than a whole served request."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


class CFConfig(StageConfig):
    kind: Literal["cf"] = "cf"
    model: Literal["als", "itemknn", "bm25", "ease", "rp3beta"] = Field(
        "als",
        description="als = implicit ALS; itemknn = cosine item-kNN; bm25 = BM25 item-kNN; "
        "ease = EASE (dense items², closed form); rp3beta = RP3β random-walk graph",
    )
    factors: int = Field(64, ge=1, description="ALS latent factors")
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, ge=1)
    alpha: float = Field(1.0, gt=0, description="ALS confidence scale on the binary matrix")
    neighbors: int = Field(200, ge=1, description="item-kNN and RP3β neighbours kept per item")
    min_rating: float | list[float | None] | None = Field(
        None,
        description='train on events rated at least this (None or "all": every event); '
        "a list is a grid tuned on validation users",
    )
    ease_lambda: float | list[float] = Field(500.0, description="EASE's L2 weight λ (or a grid)")
    ease_max_items: int = Field(
        20_000, ge=1, description="EASE refuses more items (items² × 8 bytes to fit)"
    )
    rp3_alpha: float | list[float] = Field(1.0, description="RP3β's transition exponent α")
    rp3_beta: float | list[float] = Field(0.5, description="RP3β's popularity exponent β")
    tune_metric: MetricName = Field("ndcg@10", description="what a grid is chosen by")
    tune_users: int | None = Field(
        None, ge=1, description="validation users a grid is chosen on (None: all)"
    )
    seed: int = 0

    @field_validator("min_rating", mode="before")
    @classmethod
    def _all_events(cls, v: Any) -> Any:
        """TOML has no null: ``"all"`` stands for None (every event), in a grid too."""
        if isinstance(v, list):
            return [None if x == "all" else x for x in v]
        return None if v == "all" else v

    @field_serializer("min_rating")
    def _all_in_grids(self, v: Any) -> Any:
        """A grid's None is written ``"all"``: TOML lists cannot hold a null."""
        return ["all" if x is None else x for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _grids(self) -> Self:
        for name in ("min_rating", "ease_lambda", "rp3_alpha", "rp3_beta"):
            value = getattr(self, name)
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{name}: an empty grid")
                if name not in GRIDS[self.model]:
                    tunes = ", ".join(GRIDS[self.model])
                    raise ValueError(f"{name} is a grid but model = {self.model!r} has no "
                                     f"use for it (it tunes {tunes})")  # fmt: skip
        for name, low, strict in (("ease_lambda", 0, True), ("rp3_alpha", 0, True),
                                  ("rp3_beta", 0, False)):  # fmt: skip
            for v in self.values(name):
                if v < low or (strict and v == low):
                    raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {v}")
        return self

    def values(self, name: str) -> list[Any]:
        """The values ``name`` takes: its grid, or its one value."""
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of this model's tunable settings, in config order."""
        names = GRIDS[self.model]
        combos = itertools.product(*(self.values(n) for n in names))
        return [dict(zip(names, combo, strict=True)) for combo in combos]


class CFRetriever(Retriever[CFConfig]):
    """ALS, item-kNN, EASE or RP3β over the binary user × item training matrix (or its
    liked events); the settings in use are ``params_``."""

    config_class = CFConfig

    def fit(self, ctx: FitContext) -> Self:
        self.n_items_ = ctx.catalog.n_items
        self._train: Interactions | None = ctx.train  # what tune() refits grid points on
        self.params_: dict[str, Any] = self.config.grid()[0]
        self.model_: Any = self._fit_model(ctx.train, self.params_)
        self.popularity_ = PopularityRetriever().fit(ctx)
        self.tuned_: dict[str, Any] | None = None
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_train"] = None  # the training split does not travel with a fitted model
        return state

    def _fit_model(self, train: Interactions, params: dict[str, Any]) -> Any:
        """One model, fitted on ``train`` (its liked events with ``min_rating``)."""
        c = self.config
        floor = params.get("min_rating")
        if floor is not None and train.has_ratings:
            train = train.with_frame(train.frame[train.frame["rating"] >= floor])
        matrix = train.to_csr("binary")
        if c.model in ("ease", "rp3beta"):
            counts = np.diff(matrix.tocsc().indptr)
            seen = np.flatnonzero(counts > 0)
            if len(seen) == 0:
                raise ConfigError(f"cf:{c.model}: no training event is rated >= {floor}")
            items = seen[np.lexsort((seen, -counts[seen]))]  # popularity order: ties → popular
            x = matrix[:, items]
            if c.model == "ease":
                check_ease_size(len(items), c.ease_max_items)
                return ItemModel(items, ease_weights(x, float(params["ease_lambda"])))
            a = float(params["rp3_alpha"])
            w = rp3beta_weights(x, a, float(params["rp3_beta"]), c.neighbors)
            return ItemModel(items, w, user_alpha=a)
        return self._fit_implicit(matrix)

    def _fit_implicit(self, matrix: Any) -> Any:
        c = self.config
        model: Any
        if c.model == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            with one_blas_thread():  # implicit checks BLAS threads on creation
                model = AlternatingLeastSquares(
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
            model = cls(K=c.neighbors, num_threads=1)
        with one_blas_thread(), warnings.catch_warnings():
            # implicit's own kNN normalisation hands itself a COO matrix and warns about it
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(matrix, show_progress=False)
        return model

    # ---- tuning on validation users ----------------------------------------------------
    @property
    def tunes(self) -> bool:
        return len(self.config.grid()) > 1

    @property
    def tune_users(self) -> int | None:
        return self.config.tune_users

    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any]:
        """Fit every grid point on the training split and keep the best on ``valid`` (the
        validation users; first of equals in grid order). A shared stage asked again on
        the same users answers from its record."""
        c = self.config
        key = [len(valid), [r.user for r in valid.requests], [len(t) for t in valid.truth]]
        if self.tuned_ is not None and self.tuned_["key"] == key:
            return self.tuned_["info"]
        if self._train is None:
            raise RecfunnelError(f"{self.name}: tune() needs the stage as fitted, not a copy")
        depth = depth_needed([c.tune_metric])
        tried: list[dict[str, Any]] = []
        best: tuple[float, dict[str, Any], Any] | None = None
        for point in c.grid():
            model = self.model_ if point == self.params_ else self._fit_model(self._train, point)
            got = self._answer(model, valid.requests, depth)
            value = evaluate(got.items, valid.truth, [c.tune_metric], self.n_items_)
            score = value.means[c.tune_metric]
            tried.append({**point, c.tune_metric: score})
            if best is None or score > best[0]:
                best = (score, point, model)
            del model
        assert best is not None
        _, self.params_, self.model_ = best
        info = {"chosen": dict(self.params_), "metric": c.tune_metric,
                "n_users": len(valid), "grid": tried}  # fmt: skip
        self.tuned_ = {"key": key, "info": info}
        return info

    def refit_config(self) -> CFConfig:
        """The config with the grid's choice fixed: what a refit on other data (the ranker's
        simulated lists) must use, rather than the grid's first point."""
        return self.config.model_copy(update=self.params_)

    # ---- answering ---------------------------------------------------------------------
    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        return self._answer(self.model_, requests, k)

    def _answer(self, model: Any, requests: Sequence[Request], k: int) -> CandidateBatch:
        if isinstance(model, ItemModel):
            items, scores, has = model.recommend(requests, k, self.n_items_)
        else:
            items, scores, has = self._implicit(model, requests, k)
        if (~has).any():
            cold = [requests[int(i)] for i in np.flatnonzero(~has)]
            pop = self.popularity_.retrieve(cold, k)
            items[~has], scores[~has] = pop.items, pop.scores
        return CandidateBatch(items, scores, self.stage, fallback=~has)

    def _implicit(
        self, model: Any, requests: Sequence[Request], k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hist = history_matrix(requests, self.n_items_)
        has = np.diff(hist.indptr) > 0
        items = np.full((len(requests), k), PAD, dtype=np.int64)
        scores = np.full((len(requests), k), -np.inf)
        rows = np.flatnonzero(has)
        if len(rows):
            n = min(k, self.n_items_)
            with one_blas_thread():
                ids, sc = model.recommend(
                    np.arange(len(rows)),
                    hist[rows],
                    N=n,
                    filter_already_liked_items=True,
                    recalculate_user=True,
                )
            ids = np.where(np.isfinite(sc) & (sc > -np.inf), ids, PAD)
            items[rows, : ids.shape[1]] = ids
            scores[rows, : ids.shape[1]] = np.where(ids == PAD, -np.inf, sc)
        return items, scores, has
