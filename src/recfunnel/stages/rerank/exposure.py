"""Exposure-aware reranking: a little accuracy traded, by a stated rule, for more items shown.

A ranker trained on cold-start lists leans on popularity (with five rated items it is the
strongest signal), so every user's top 10 draws on the same hundred-odd titles. This stage
subtracts a popularity penalty from the previous stage's scores, standardised within each
list, and reorders by the result: the score-penalty form of popularity-bias re-ranking
(Abdollahpouri et al., "Managing popularity bias in recommender systems with personalized
re-ranking", FLAIRS 2019, use xQuAD; a linear penalty is the simplest member of the family).

The weight is chosen on validation users, never test users: the largest weight of the grid
whose NDCG@10 stays within ``tolerance`` of the grid's best. Its cost in accuracy is thus
bounded by a number the user sets, and its gain in exposure is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, field_validator

from recfunnel.core.candidates import PAD, CandidateBatch, merge_head
from recfunnel.core.errors import NotFittedError
from recfunnel.core.metrics import MetricName, depth_needed, evaluate
from recfunnel.core.types import EvalSet, Request
from recfunnel.stages.base import FitContext, StageConfig, TuneContext
from recfunnel.stages.rerank.base import Reranker, zscore

EXPOSURE = "unique@10"
"""The exposure figure the tuning records beside the accuracy metric."""


class ExposureConfig(StageConfig):
    """``kind = "exposure"``: penalise popularity by a weight tuned on validation users."""

    kind: Literal["exposure"] = "exposure"
    top_n: int = Field(100, ge=2, description="Candidates from the previous stage to rerank.")
    weight: float | None = Field(
        None, ge=0.0,
        description="Penalty per standard deviation of log popularity (None: tuned).",
    )  # fmt: skip
    grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0],
        min_length=1, description="Weights the tuning tries.",
    )  # fmt: skip
    metric: MetricName = Field("ndcg@10", description="The accuracy the tuning protects.")
    tolerance: float = Field(
        0.005, ge=0.0,
        description="Largest drop of `metric` below the grid's best the tuning accepts.",
    )  # fmt: skip
    users: int | None = Field(None, ge=1, description="Validation users to tune on (None: all).")

    @field_validator("grid")
    @classmethod
    def _non_negative(cls, grid: list[float]) -> list[float]:
        if any(w < 0 for w in grid):
            raise ValueError(f"grid weights must be >= 0, got {grid}")
        return sorted(set(grid))


def standardise(scores: np.ndarray) -> np.ndarray:
    """Scores as z-scores within the list; constant or non-finite scores become positions
    (1 at the top, falling by one standard deviation's worth over the list)."""
    if np.isfinite(scores).all() and np.std(scores) > 0:
        return zscore(scores)
    return zscore(-np.arange(len(scores), dtype=np.float64))


class ExposureReranker(Reranker[ExposureConfig]):
    """Reorders each head by z(score) − weight · z(log popularity) (see module doc)."""

    config_class = ExposureConfig

    def fit(self, ctx: FitContext) -> Self:
        self.penalty_ = zscore(np.log1p(ctx.train.item_counts().astype(np.float64)))
        self.weight_: float | None = self.config.weight  # tune() sets it when None
        return self

    @property
    def tunes(self) -> bool:
        return self.config.weight is None

    @property
    def tune_users(self) -> int | None:
        return self.config.users

    def _weight(self) -> float:
        weight = self.weight_
        if weight is None:
            raise NotFittedError(f"{self.name}: the weight is tuned on validation users; "
                                 "run tune() first or set `weight`")  # fmt: skip
        return float(weight)

    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        return self.reorder(head, self._weight())

    def reorder(self, head: CandidateBatch, weight: float) -> CandidateBatch:
        """``head`` reordered with penalty ``weight``; ties keep the input order."""
        items = head.items.copy()
        scores = np.full(head.items.shape, -np.inf)
        for r in range(len(head)):
            real = np.flatnonzero(head.items[r] != PAD)
            if len(real) == 0:
                continue
            row = head.items[r, real]
            value = standardise(np.asarray(head.scores[r, real], dtype=np.float64))
            value = value - weight * self.penalty_[row]
            order = np.lexsort((np.arange(len(row)), -value))
            items[r, : len(row)] = row[order]
            scores[r, : len(row)] = value[order]
        return CandidateBatch(items, scores, self.name, fallback=head.fallback)

    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any]:
        """The largest grid weight whose validation ``metric`` is within ``tolerance`` of
        the grid's best (one pass of the earlier stages; each weight reorders it)."""
        c = self.config
        before = ctx.before(valid.requests, max(self.top_n, depth_needed([c.metric, EXPOSURE])))
        assert before.final is not None
        head = before.head(self.top_n)
        n_items = len(self.penalty_)
        grid: dict[str, dict[str, float]] = {}
        for w in c.grid:
            final = merge_head(self.reorder(head, w), before.final)
            got = evaluate(final.items, valid.truth, [c.metric, EXPOSURE], n_items).means
            grid[str(w)] = got
        best = max(v[c.metric] for v in grid.values())
        chosen = max(w for w in c.grid if grid[str(w)][c.metric] >= best - c.tolerance)
        self.weight_ = chosen
        return {"weight": chosen, "metric": c.metric, "tolerance": c.tolerance,
                "n_users": len(valid), "grid": grid}  # fmt: skip
