"""The pipeline: retrieve from every pool, fuse, (later: rank, rerank, explain).

Evaluation, serving and batch engines all call :meth:`Funnel.run`, and every stage's output
is kept in the result's ``trace`` so diagnostics read the same objects serving returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from pydantic import BaseModel

from recfunnel.config import PipelineConfig, RetrieverConfig
from recfunnel.llm.base import LLM, LLMConfig
from recfunnel.rerank.base import Reranker, merge_head
from recfunnel.rerank.llm import build_reranker
from recfunnel.retrieve.base import Retriever
from recfunnel.retrieve.cf import CFRetriever
from recfunnel.retrieve.content import ContentRetriever
from recfunnel.retrieve.fusion import fuse
from recfunnel.retrieve.popularity import PopularityRetriever, RandomRetriever
from recfunnel.types import CandidateBatch, Catalog, Interactions, Request

log = logging.getLogger(__name__)

RETRIEVERS: dict[str, type[Retriever]] = {
    "popularity": PopularityRetriever,
    "random": RandomRetriever,
    "cf": CFRetriever,
    "content": ContentRetriever,
}


def with_seed(config: BaseModel, seed: int) -> BaseModel:
    """The same config with its ``seed`` field (if any) set: one seed drives a whole run."""
    return (
        config.model_copy(update={"seed": seed}) if "seed" in type(config).model_fields else config
    )


def shared_llm(config: LLMConfig, shared: dict[str, Any]) -> LLM:
    """One loaded model per distinct LLM config in a run (loading is the slow part)."""
    from recfunnel.llm import build_llm

    key = "llm:" + config.model_dump_json()
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
        if self.config.rerank is not None:
            rerank = self.config.rerank.model_copy(update={"seed": self.seed})
            if rerank.noun == "item":
                rerank = rerank.model_copy(update={"noun": catalog.noun})
            self.reranker_ = build_reranker(rerank, shared_llm(rerank.llm, self._shared))
            self.reranker_.fit(train, catalog)
        return self

    def run(self, requests: Sequence[Request], k: int) -> FunnelResult:
        """Rank ``k`` items for every request, keeping each stage's output."""
        if not self.retrievers_:
            raise RuntimeError("call fit() before run()")
        depth = max(k, self.config.pool_size)
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
            final = fused
        else:
            final = pools[0]
        stats: dict[str, dict[str, Any]] = {}
        if self.reranker_ is not None and self.config.rerank is not None:
            top = self.config.rerank.top_n
            head = CandidateBatch(final.items[:, :top], final.scores[:, :top], final.stage)
            t0 = time.perf_counter()
            reranked = self.reranker_.rerank(requests, head)
            timings[reranked.stage] = time.perf_counter() - t0
            trace[reranked.stage] = reranked
            stats[reranked.stage] = self.reranker_.stats()
            final = merge_head(reranked, final)
        if final.depth > k:
            final = CandidateBatch(
                final.items[:, :k], final.scores[:, :k], final.stage, final.fallback
            )
        return FunnelResult(final=final, trace=trace, timings=timings, stats=stats)
