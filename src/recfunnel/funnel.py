"""The pipeline: retrieve from every pool, fuse, (later: rank, rerank, explain).

Evaluation, serving and batch engines all call :meth:`Funnel.run`, and every stage's output
is kept in the result's ``trace`` so diagnostics read the same objects serving returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
from pydantic import BaseModel

from recfunnel.config import PipelineConfig, RetrieverConfig
from recfunnel.errors import ConfigError
from recfunnel.evaluate.metrics import depth_needed, evaluate
from recfunnel.explain import Explainer, Explanation
from recfunnel.llm.base import LLM, LLMConfig
from recfunnel.rank.ltr import LTRRanker
from recfunnel.rerank.aspects import AspectConfig, AspectReranker
from recfunnel.rerank.base import Reranker, merge_head, prev_ranks
from recfunnel.rerank.goal import GoalConfig, GoalReranker
from recfunnel.rerank.llm import LLMReranker, RerankConfig, build_reranker
from recfunnel.retrieve.base import Retriever
from recfunnel.retrieve.cf import CFRetriever
from recfunnel.retrieve.content import ContentRetriever
from recfunnel.retrieve.fusion import fuse
from recfunnel.retrieve.popularity import PopularityRetriever, RandomRetriever
from recfunnel.retrieve.sasrec import SASRecRetriever
from recfunnel.types import PAD, CandidateBatch, Catalog, EvalSet, Interactions, Request

log = logging.getLogger(__name__)

RETRIEVERS: dict[str, type[Retriever]] = {
    "popularity": PopularityRetriever,
    "random": RandomRetriever,
    "cf": CFRetriever,
    "content": ContentRetriever,
    "sasrec": SASRecRetriever,
}


def with_seed(config: BaseModel, seed: int) -> BaseModel:
    """The same config with its ``seed`` field (if any) set: one seed drives a whole run."""
    return (
        config.model_copy(update={"seed": seed}) if "seed" in type(config).model_fields else config
    )


def llm_key(config: LLMConfig) -> str:
    """Where a run's ``fitted`` dict keeps the model loaded for ``config``."""
    return "llm:" + config.model_dump_json()


def shared_llm(config: LLMConfig, shared: dict[str, Any]) -> LLM:
    """One loaded model per distinct LLM config in a run (loading is the slow part)."""
    from recfunnel.llm import build_llm

    key = llm_key(config)
    if key not in shared:
        shared[key] = build_llm(config)
    llm: LLM = shared[key]
    return llm


def build_retriever(config: RetrieverConfig) -> Retriever:
    cls = RETRIEVERS[config.kind]
    return cls(config)  # type: ignore[call-arg]


@dataclass
class FunnelResult:
    """The final ranking plus every stage's output and wall time (seconds)."""

    final: CandidateBatch
    trace: dict[str, CandidateBatch] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-stage figures beyond the candidates (LLM calls, tokens, invalid outputs)."""
    rerank_input: CandidateBatch | None = None
    """The full list the reranker's head was cut from (its tail follows the reranked head)."""
    explanations: list[list[Explanation]] | None = None
    """Per request, a grounded reason for each of its top ``explain.top_k`` items."""


class Funnel:
    """One configured pipeline. ``fitted`` lets pipelines of one run share fitted stages
    (same config + seed = same model), so evaluating five pipelines fits each model once."""

    def __init__(
        self,
        config: PipelineConfig,
        seed: int = 0,
        fitted: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self._shared = fitted if fitted is not None else {}
        self.retrievers_: list[tuple[str, Retriever]] = []
        self.reranker_: Reranker | None = None
        self.calibration_: dict[str, Any] | None = None
        self.ranker_: LTRRanker | None = None
        self.ranker_info_: dict[str, Any] | None = None
        self.explainer_: Explainer | None = None

    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        self.catalog_ = catalog
        self.retrievers_ = []
        self.fit_seconds_ = 0.0
        for i, rc in enumerate(self.config.retrievers):
            seeded = with_seed(rc, self.seed)
            key = "retriever:" + seeded.model_dump_json()
            if key not in self._shared:
                t0 = time.perf_counter()
                self._shared[key] = build_retriever(seeded).fit(train, catalog)  # type: ignore[arg-type]
                self.fit_seconds_ += time.perf_counter() - t0
            retriever = self._shared[key]
            name = retriever.stage
            if any(n == name for n, _ in self.retrievers_):
                name = f"{name}#{i + 1}"
            self.retrievers_.append((name, retriever))
        if self.config.rank is not None:
            content = next(
                (r for _, r in self.retrievers_ if isinstance(r, ContentRetriever)), None
            )
            self.ranker_ = LTRRanker(with_seed(self.config.rank, self.seed))  # type: ignore[arg-type]
            self.ranker_.prepare(train, catalog, content)
        if isinstance(self.config.rerank, AspectConfig):
            self.reranker_ = AspectReranker(self.config.rerank).fit(train, catalog)
        elif isinstance(self.config.rerank, GoalConfig):
            goal = self.config.rerank.model_copy(update={"seed": self.seed})
            if goal.noun == "item":
                goal = goal.model_copy(update={"noun": catalog.noun})
            llm = shared_llm(goal.llm, self._shared)
            self.reranker_ = GoalReranker(goal, llm).fit(train, catalog)
        elif self.config.rerank is not None:
            rerank = self.config.rerank.model_copy(update={"seed": self.seed})
            if rerank.noun == "item":
                rerank = rerank.model_copy(update={"noun": catalog.noun})
            self.reranker_ = build_reranker(rerank, shared_llm(rerank.llm, self._shared))
            self.reranker_.fit(train, catalog)
        if self.config.explain is not None:
            llm = shared_llm(self.config.explain.llm, self._shared)
            self.explainer_ = Explainer(self.config.explain, llm).fit(catalog)
        return self

    def run(
        self,
        requests: Sequence[Request],
        k: int,
        shuffle_head: int | None = None,
        rerank_rows: Callable[[Sequence[Request], CandidateBatch], np.ndarray] | None = None,
    ) -> FunnelResult:
        """Rank ``k`` items for every request, keeping each stage's output.

        ``shuffle_head`` (a seed) shuffles each reranker input before reranking: a
        position-bias probe, since a reranker that reads its candidates should not care.
        ``rerank_rows`` maps the requests and the reranker's input to a mask of the rows to
        rerank; the others keep their order (see ``ExperimentConfig.rerank_users``).
        """
        return self.finish(requests, self.prepare(requests, k), k, shuffle_head, rerank_rows)

    def prepare(self, requests: Sequence[Request], k: int) -> FunnelResult:
        """Retrieval, fusion and the ranker: everything before the LLM. Its ``final`` is
        the order a server falls back to when the LLM stage cannot answer in time."""
        if not self.retrievers_:
            raise RuntimeError("call fit() before run()")
        depth = max(k, self.config.pool_size)
        trace, timings, final = self._retrieve(requests, depth)
        if self.ranker_ is not None:
            if not hasattr(self.ranker_, "model_"):
                raise RuntimeError("the ranker is not trained: call fit_ranker(valid) first")
            pools = {n: trace[n] for n, _ in self.retrievers_}
            t0 = time.perf_counter()
            ranked = self.ranker_.rank(requests, self._head(final), pools)
            timings[ranked.stage] = time.perf_counter() - t0
            trace[ranked.stage] = ranked
            final = merge_head(ranked, final)
        return FunnelResult(final, trace, timings)

    def finish(
        self,
        requests: Sequence[Request],
        prepared: FunnelResult,
        k: int,
        shuffle_head: int | None = None,
        rerank_rows: Callable[[Sequence[Request], CandidateBatch], np.ndarray] | None = None,
    ) -> FunnelResult:
        """The reranker and the explanations over :meth:`prepare`'s output, cut to ``k``."""
        final = prepared.final
        trace, timings = dict(prepared.trace), dict(prepared.timings)
        stats: dict[str, dict[str, Any]] = {}
        rerank_input = None
        if self.reranker_ is not None and self.config.rerank is not None:
            if shuffle_head is not None:
                final = shuffled_head(final, self.config.rerank.top_n, shuffle_head)
            rerank_input = final
            top = self.config.rerank.top_n
            head = CandidateBatch(
                final.items[:, :top],
                final.scores[:, :top],
                final.stage,
                extras={"prev_rank": prev_ranks(final)[:, :top]},
            )
            t0 = time.perf_counter()
            rows = None if rerank_rows is None else rerank_rows(requests, head)
            if rows is None:
                reranked = self.reranker_.rerank(requests, head)
            else:
                reranked = self._rerank_some(requests, head, rows)
            timings[reranked.stage] = time.perf_counter() - t0
            trace[reranked.stage] = reranked
            stats[reranked.stage] = self.reranker_.stats()
            if rows is not None and "row_seconds" in stats[reranked.stage]:
                # per-row figures cover the reranked rows only: the others cost no LLM time
                full = np.zeros(len(requests))
                full[np.flatnonzero(rows)] = stats[reranked.stage]["row_seconds"]
                stats[reranked.stage]["row_seconds"] = full
            final = merge_head(reranked, final)
        final = cut(final, k)
        explanations = None
        if self.explainer_ is not None:
            t0 = time.perf_counter()
            explanations = self.explainer_.explain(requests, final)
            timings["explain"] = time.perf_counter() - t0
            stats["explain"] = self.explainer_.stats()
        return FunnelResult(final, trace, timings, stats, rerank_input, explanations)

    def _rerank_some(
        self, requests: Sequence[Request], head: CandidateBatch, rows: np.ndarray
    ) -> CandidateBatch:
        """Rerank only ``rows``; the others pass through in input order (no LLM score)."""
        assert self.reranker_ is not None
        pick = np.flatnonzero(rows)
        prev = prev_ranks(head)
        sub = CandidateBatch(
            head.items[pick], head.scores[pick], head.stage, extras={"prev_rank": prev[pick]}
        )
        done = self.reranker_.rerank([requests[int(i)] for i in pick], sub)
        items, scores = head.items.copy(), head.scores.copy()
        items[pick], scores[pick] = done.items, done.scores
        fallback = np.zeros(len(head), dtype=bool)
        if done.fallback is not None:
            fallback[pick] = done.fallback
        pos = np.where(head.items != PAD, np.arange(head.depth)[None, :], -1)
        extras: dict[str, np.ndarray] = {"input_pos": pos, "prev_rank": prev.copy()}
        if "llm_score" in done.extras:
            extras["llm_score"] = np.full(head.items.shape, np.nan)
        for key, value in done.extras.items():
            extras[key][pick] = value
        return CandidateBatch(items, scores, done.stage, fallback, extras)

    def _retrieve(
        self, requests: Sequence[Request], depth: int
    ) -> tuple[dict[str, CandidateBatch], dict[str, float], CandidateBatch]:
        """Every pool, fused when several: (trace, timings, the fused or only pool)."""
        trace: dict[str, CandidateBatch] = {}
        timings: dict[str, float] = {}
        for name, retriever in self.retrievers_:
            t0 = time.perf_counter()
            trace[name] = retriever.retrieve(requests, depth)
            timings[name] = time.perf_counter() - t0
        pools = list(trace.values())
        if self.config.fusion is not None and len(pools) > 1:
            t0 = time.perf_counter()
            fused = fuse(pools, self.config.fusion, depth, self.catalog_.n_items)
            timings[fused.stage] = time.perf_counter() - t0
            trace[fused.stage] = fused
            return trace, timings, fused
        return trace, timings, pools[0]

    def _head(self, batch: CandidateBatch) -> CandidateBatch:
        top = self.config.rank.top_n if self.config.rank else batch.depth
        return CandidateBatch(
            batch.items[:, :top], batch.scores[:, :top], batch.stage, batch.fallback
        )

    def fit_ranker(self, valid: EvalSet, forbidden: EvalSet | None = None) -> dict[str, Any]:
        """Train the learned ranker on validation requests (pools from the fitted
        retrievers, labels from validation truth); ``forbidden``: the test set, whose
        targets must never be a label."""
        if self.ranker_ is None:
            raise ConfigError(f"pipeline {self.config.name!r} has no rank stage")
        if len(valid) == 0:
            raise ConfigError("the ranker needs validation users (set protocol.n_valid)")
        trace, _, fused = self._retrieve(valid.requests, self.config.pool_size)
        pools = {n: trace[n] for n, _ in self.retrievers_}
        self.ranker_.fit(valid, self._head(fused), pools, forbidden)
        self.ranker_info_ = self.ranker_.info()
        return self.ranker_info_

    def calibrate(self, valid: EvalSet) -> dict[str, Any]:
        """Fit the reranker's blend weight on validation users (never test users).

        One LLM pass over ``valid``; every weight of the grid then reorders those same
        answers, and the best by the calibration metric becomes the reranker's ``blend``.
        """
        rc = self.config.rerank
        if not isinstance(self.reranker_, LLMReranker) or not isinstance(rc, RerankConfig) \
                or rc.calibration is None:  # fmt: skip
            raise ConfigError(f"pipeline {self.config.name!r} has no rerank.calibration")
        cal = rc.calibration
        if len(valid) == 0:
            raise ConfigError("calibration needs validation users (set protocol.n_valid)")
        metric = cal.metric
        res = self.run(valid.requests, depth_needed([metric]))
        stage = res.trace[self.reranker_.stage]
        before = res.rerank_input
        assert before is not None
        scores: dict[float, float] = {}
        for w in cal.grid:
            head = self.reranker_.reorder(stage, w)
            final = merge_head(head, before)
            got = evaluate(final.items, valid.truth, [metric], self.catalog_.n_items)
            scores[w] = got.means[metric]
        best = max(cal.grid, key=lambda w: scores[w])  # first of equals: least prior
        self.reranker_.config = self.reranker_.config.model_copy(update={"blend": best})
        self.calibration_ = {"blend": best, "metric": metric, "n_users": len(valid),
                             "grid": {str(w): v for w, v in scores.items()}}  # fmt: skip
        log.info("%s: calibrated blend %.2f (%s %.4f)", self.config.name, best, metric,
                 scores[best])  # fmt: skip
        return self.calibration_


def cut(batch: CandidateBatch, k: int) -> CandidateBatch:
    """The batch's first ``k`` columns (the same batch when it is no deeper)."""
    if batch.depth <= k:
        return batch
    extras = {key: v[:, :k] for key, v in batch.extras.items()}
    return CandidateBatch(batch.items[:, :k], batch.scores[:, :k], batch.stage, batch.fallback,
                          extras)  # fmt: skip


def shuffled_head(batch: CandidateBatch, top: int, seed: int) -> CandidateBatch:
    """The batch with each row's first ``top`` items in a seeded random order.

    Only the presentation is shuffled: ``extras["prev_rank"]`` keeps each item's rank in
    ``batch``, so a reranker that shows or blends in the previous stage's rank still has it.
    """
    items, scores = batch.items.copy(), batch.scores.copy()
    ranks = prev_ranks(batch).copy()
    rng = np.random.default_rng(seed)
    for r in range(len(items)):
        n = int((items[r, :top] != PAD).sum())
        perm = rng.permutation(n)
        items[r, :n] = items[r, :n][perm]
        scores[r, :n] = scores[r, :n][perm]
        ranks[r, :n] = ranks[r, :n][perm]
    return CandidateBatch(items, scores, batch.stage, batch.fallback, {"prev_rank": ranks})
