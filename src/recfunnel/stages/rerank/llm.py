"""LLM rerankers: LlamaRec's verbalizer, RankGPT's permutation generation, TALLRec's yes/no.

All three share one pipeline (this module's :class:`LLMReranker`):

1. take each request's head (the previous stage's top ``top_n``);
2. present it in ``shuffles`` orders (the input order first, then seeded shuffles) to
   measure and average out position bias;
3. score every presented list with the method (batched over requests);
4. aggregate the orders (Borda: mean rank, or mean raw score) and report their agreement;
5. optionally blend with a prior (the previous stage's rank, or popularity; ``blend`` = its
   weight, fixed or fitted on validation users by ``calibration``), since a small model's
   signal is mostly position and should refine the ranker rather than replace it;
6. on a back-end failure, keep the previous order for that request and count it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import kendalltau, rankdata

from recfunnel.core import progress
from recfunnel.core.candidates import PAD, CandidateBatch, merge_head, prev_ranks
from recfunnel.core.metrics import MetricName, depth_needed, evaluate
from recfunnel.core.types import EvalSet, Request
from recfunnel.llm.base import LLMUnavailable
from recfunnel.stages.base import FitContext, LLMStage, LLMStageConfig, LLMStats, TuneContext
from recfunnel.stages.rerank.base import Reranker, user_rng, zscore
from recfunnel.stages.rerank.prompts import (
    LABELS,
)

log = logging.getLogger(__name__)

Method = Literal["verbalizer", "permutation", "pointwise"]


class Calibration(BaseModel):
    """Score calibration: choose the blend weight that maximises ``metric`` on validation
    users (never test users), trying every weight on one set of LLM answers."""

    model_config = ConfigDict(extra="forbid")
    metric: MetricName = "ndcg@10"
    grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    users: int | None = Field(100, ge=1, description="validation users used (None: all)")

    @model_validator(mode="after")
    def _grid(self) -> Calibration:
        if not self.grid or any(not 0.0 <= w <= 1.0 for w in self.grid):
            raise ValueError("calibration.grid must be a non-empty list of weights in [0, 1]")
        return self


class RerankConfig(LLMStageConfig):
    """An LLM reranking stage (``kind`` = verbalizer, permutation or pointwise)."""

    kind: Method = "verbalizer"
    top_n: int = Field(20, ge=2, description="Candidates from the previous stage to rerank.")
    shuffles: int = Field(1, ge=1, description="Orders presented: input order + shuffles-1.")
    aggregate: Literal["borda", "mean-score"] = "borda"
    blend: float = Field(0.0, ge=0.0, le=1.0, description="Weight of the prior (blend_with).")
    blend_with: Literal["previous", "popularity"] = Field(
        "previous", description="prior blended in: the previous stage's rank, or popularity"
    )
    calibration: Calibration | None = Field(
        None, description="fit `blend` on validation users (replaces the configured value)"
    )
    show_prev_rank: bool = Field(False, description="Print each candidate's ranker rank.")
    history_items: int = Field(20, ge=0, description="Most recent history items shown.")
    title_chars: int = Field(60, ge=8)
    window: int = Field(
        20, ge=2, description="candidates per prompt (verbalizer chunks; permutation window)"
    )
    step: int = Field(10, ge=1, description="permutation: window step")
    batch_size: int = Field(16, ge=1, description="prompts sent to the LLM at once")

    @model_validator(mode="after")
    def _limits(self) -> RerankConfig:
        if self.kind == "verbalizer" and self.window > len(LABELS):
            raise ValueError(
                f"verbalizer labels at most {len(LABELS)} candidates per prompt (window)"
            )
        if self.step > self.window:
            raise ValueError("step must not exceed window")
        return self


@dataclass
class Job:
    """One presented list: request ``row``, items in presented order, where each sits in
    the stage's input (``positions``) and its previous-stage rank (``prev_ranks``, shown in
    the prompt with ``show_prev_rank``; equal to ``positions`` unless the input was
    shuffled, as the position probe does)."""

    row: int
    items: np.ndarray
    positions: np.ndarray
    prev_ranks: np.ndarray


@dataclass
class Scored:
    scores: np.ndarray  # aligned with Job.items, higher = better
    outputs: int  # LLM outputs behind these scores (for the invalid rate)
    invalid: int = 0  # how many of those outputs were invalid
    seconds: float = 0.0  # LLM compute time of this list (as measured when computed)


@dataclass
class RerankStats(LLMStats):
    """An LLM reranker's figures, plus how well its shuffled orders agree."""

    agreement_sum: float = 0.0
    """Sum over rows of the mean Kendall tau between the row's presented orders."""
    agreement_rows: int = 0

    def figures(self) -> dict[str, float]:
        agree = self.agreement_sum / self.agreement_rows if self.agreement_rows else float("nan")
        return {**super().figures(), "order_agreement": agree}


class LLMReranker(Reranker[RerankConfig], LLMStage[RerankConfig]):
    """Shared machinery; subclasses implement :meth:`score_jobs`."""

    config_class = RerankConfig

    def fit(self, ctx: FitContext) -> Self:
        super().fit(ctx)
        self.style_ = self.prompt_style(ctx.catalog, show_prev_rank=self.config.show_prev_rank)
        self.blend_ = self.config.blend  # calibration on validation users replaces it
        self.catalog_ = ctx.catalog
        self.popularity_ = np.log1p(ctx.train.item_counts().astype(np.float64))
        return self

    # ---- calibration on validation users ----------------------------------------------
    @property
    def tunes(self) -> bool:
        return self.config.calibration is not None

    @property
    def tune_users(self) -> int | None:
        return self.config.calibration.users if self.config.calibration else None

    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any] | None:
        """Fit the blend weight on validation users (never test users).

        One LLM pass over ``valid``; every weight of the grid then reorders those same
        answers, and the best by the calibration metric becomes this stage's ``blend``.
        """
        cal = self.config.calibration
        if cal is None:
            return None
        metric = cal.metric
        before = ctx.before(valid.requests, depth_needed([metric]))
        answered = self.answer(valid.requests, before.head(self.top_n))
        assert before.final is not None
        scores: dict[float, float] = {}
        for w in cal.grid:
            final = merge_head(self.reorder(answered, w), before.final)
            got = evaluate(final.items, valid.truth, [metric], self.catalog_.n_items)
            scores[w] = got.means[metric]
        best = max(cal.grid, key=lambda w: scores[w])  # first of equals: least prior
        self.blend_ = best
        log.info("%s: calibrated blend %.2f (%s %.4f)", self.name, best, metric, scores[best])
        return {"blend": best, "metric": metric, "n_users": len(valid),
                "grid": {str(w): v for w, v in scores.items()}}  # fmt: skip

    def n_orders(self) -> int:
        return self.config.shuffles

    def score_jobs(self, requests: Sequence[Request], jobs: list[Job]) -> list[Scored]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------
    def _orders(self, request: Request, n: int) -> list[np.ndarray]:
        """Input order first, then seeded shuffles that depend only on seed and user."""
        orders = [np.arange(n)]
        rng = user_rng(self.config.seed, request, n)
        while len(orders) < self.n_orders():
            orders.append(rng.permutation(n))
        return orders

    def _batched(self, requests: Sequence[Request], jobs: list[Job]) -> list[Scored | None]:
        """Score jobs in chunks; a chunk whose back-end call fails yields None (fallback)."""
        out: list[Scored | None] = []
        size = self.config.batch_size
        chunks = range(0, len(jobs), size)
        for start in progress.track(chunks, self.name, min_steps=5, unit="batch"):
            chunk = jobs[start : start + size]
            try:
                out.extend(self.score_jobs(requests, chunk))
            except LLMUnavailable as exc:
                log.warning("%s: back-end unavailable (%s); keeping input order", self.name, exc)
                out.extend([None] * len(chunk))
        return out

    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        return self.reorder(self.answer(requests, head), self.blend_)

    def answer(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        """``head`` in its own order with the LLM's score of each candidate
        (``extras["llm_score"]``) and the call's stats: what every blend weight reorders."""
        meter = self.meter()
        n_rows, depth = head.items.shape
        prev = prev_ranks(head)
        jobs: list[Job] = []
        for r in range(n_rows):
            valid = np.flatnonzero(head.items[r] != PAD)
            if len(valid) == 0:
                continue  # nothing to rank: no prompt (the row stays as given)
            for order in self._orders(requests[r], len(valid)):
                jobs.append(
                    Job(r, head.items[r, valid][order], valid[order], prev[r, valid][order])
                )
        scored = self._batched(requests, jobs)

        raw = np.full((n_rows, depth), np.nan)  # LLM score of each input position
        fallback = np.zeros(n_rows, dtype=bool)
        invalid_rows = np.zeros(n_rows, dtype=bool)
        outputs = invalid_outputs = 0
        agreements: list[float] = []
        row_seconds = np.zeros(n_rows)
        by_row: dict[int, list[tuple[Job, Scored | None]]] = {}
        for job, sc in zip(jobs, scored, strict=True):
            by_row.setdefault(job.row, []).append((job, sc))
            row_seconds[job.row] += sc.seconds if sc is not None else 0.0
        for r, pairs in by_row.items():
            n = len(pairs[0][0].items)
            if n == 0:
                continue
            if any(sc is None for _, sc in pairs):
                fallback[r] = True
                continue
            per_order = np.full((len(pairs), n), np.nan)  # scores by input position
            ranks = np.full((len(pairs), n), np.nan)
            for o, (job, sc) in enumerate(pairs):
                assert sc is not None
                per_order[o, job.positions] = sc.scores
                ranks[o, job.positions] = rankdata(-sc.scores, method="average")
                outputs += sc.outputs
                invalid_outputs += sc.invalid
                invalid_rows[r] |= sc.invalid > 0
            if len(pairs) > 1:
                taus = [
                    kendalltau(ranks[a], ranks[b]).statistic
                    for a, b in itertools.combinations(range(len(pairs)), 2)
                ]
                agreements.append(float(np.nanmean(taus)))
            raw[r, :n] = (
                -ranks.mean(axis=0)
                if self.config.aggregate == "borda" and len(pairs) > 1
                else per_order.mean(axis=0)
            )
        st = RerankStats(rows=n_rows, users=n_rows, fallback_rows=int(fallback.sum()),
                         outputs=outputs, invalid_outputs=invalid_outputs,
                         invalid_rows=int(invalid_rows.sum()), row_seconds=row_seconds,
                         agreement_sum=float(np.sum(agreements)) if agreements else 0.0,
                         agreement_rows=len(agreements))  # fmt: skip
        st.add_usage(meter.used)
        return CandidateBatch(head.items, head.scores, self.name, fallback,
                              {"llm_score": raw, "prev_rank": prev}, st)  # fmt: skip

    def prior(self, items: np.ndarray, prev_rank: np.ndarray) -> np.ndarray:
        """What the LLM score is blended with: the previous stage's rank (linear, 1 at its
        top, 0 at its bottom) or log-popularity in the training data."""
        valid = items != PAD
        if self.config.blend_with == "popularity":
            return np.where(valid, self.popularity_[np.where(valid, items, 0)], np.nan)
        n = valid.sum(axis=1, keepdims=True)
        return np.where(valid, (n - 1 - prev_rank) / np.maximum(n - 1, 1), np.nan)

    def reorder(self, batch: CandidateBatch, blend: float) -> CandidateBatch:
        """Order each row of :meth:`answer`'s batch (its input order) by
        ``(1 - blend)·z(LLM score) + blend·z(prior)``; ties keep the input order.

        The last step of :meth:`rerank`, kept apart so calibration can try many weights on
        one set of LLM answers. Rows marked ``fallback`` keep their order and scores.
        """
        raw, prev = batch.extras["llm_score"], batch.extras["prev_rank"]
        prior = self.prior(batch.items, prev)
        fallback = (
            batch.fallback if batch.fallback is not None else np.zeros(len(batch), dtype=bool)
        )
        items, scores = batch.items.copy(), batch.scores.copy()
        new_raw, new_prev = raw.copy(), prev.copy()
        for r in np.flatnonzero(~fallback):
            n = int((batch.items[r] != PAD).sum())
            if n == 0:
                continue
            x = raw[r, :n]
            final = x if blend == 0 else (1 - blend) * zscore(x) + blend * zscore(prior[r, :n])
            order = np.lexsort((np.arange(n), -final))  # ties keep the input order
            items[r, :n] = batch.items[r, :n][order]
            scores[r, :n] = final[order]
            new_raw[r, :n] = x[order]
            new_prev[r, :n] = prev[r, :n][order]
        return CandidateBatch(items, scores, self.name, fallback,
                              {"llm_score": new_raw, "prev_rank": new_prev},
                              batch.stats)  # fmt: skip
