"""The recommender behind the API: resolve a request (:mod:`~recfunnel.serve.lookup`),
route it, run the funnel within a latency budget (:mod:`~recfunnel.serve.llm_gate`),
explain, and guard the answer (:mod:`~recfunnel.serve.answers`).

When the LLM worker is busy past the budget, a back-end fails, or the circuit breaker is
open, the answer is the ranker's order, marked as a fallback with its reason and
counted; a list that is some stage's own fallback is labelled by that stage. Everything a
request can get wrong raises a :class:`~recfunnel.errors.RecfunnelError` subclass the
app turns into a 4xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pybreaker

from recfunnel.core.candidates import cut
from recfunnel.core.errors import RecfunnelError
from recfunnel.core.titles import TitleIndex
from recfunnel.core.types import Dataset, Request
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import make_split
from recfunnel.llm.base import LLM, Usage
from recfunnel.pipeline import Pipeline, Shared, build_pipeline
from recfunnel.pipeline.config import learns_on_validation, llm_configs, pipelines_of
from recfunnel.serve.answers import (
    Answer,
    Item,
    Shaper,
    candidates_of,
    fallback_cause,
    pool_of,
    traces_of,
)
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.llm_gate import LLMGate
from recfunnel.serve.lookup import EmptyRequest, Lookup
from recfunnel.serve.metrics import Metrics
from recfunnel.stages.base import FitContext
from recfunnel.stages.explain.grounded import ExplainConfig, Explainer

__all__ = ["Answer", "EmptyRequest", "Item", "Service", "traces_of"]
log = logging.getLogger(__name__)
T = TypeVar("T")


class Service:
    """One fitted pipeline over a whole dataset (no split: serving learns from all of it).

    ``llm`` replaces every LLM the pipeline names (tests use a scripted one)."""

    def __init__(
        self,
        config: ServeConfig,
        dataset: Dataset | None = None,
        llm: LLM | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        t0 = time.perf_counter()
        self.data = dataset if dataset is not None else load_dataset(config.dataset,
                                                                     config.data_dir)  # fmt: skip
        catalog, inter = self.data.catalog, self.data.interactions
        shared = Shared.with_llm(llm)
        configs = llm_configs(config.pipeline)
        self.pipeline = self._fitted(build_pipeline(config.pipeline, config.seed, shared))
        llms = [shared.llms.get(c) for c in configs]
        self.llm: LLM | None = llms[0] if llms else None
        """The first LLM: it also decides chat actions and writes reasons."""
        self.explainer: Explainer | None = None
        if self.llm is not None and config.explain_llm_top:
            ecfg = ExplainConfig(top_k=config.explain_llm_top, llm=configs[0])
            ctx = FitContext(inter, catalog, config.seed, shared.llms)
            self.explainer = Explainer(ecfg).fit(ctx)
        self.lookup = Lookup(self.data, config.seed)
        self.gate = LLMGate(config, self.pipeline, llms, self.metrics, self.explainer)
        self.shaper = Shaper(catalog, self.metrics)
        self.fit_seconds = time.perf_counter() - t0
        log.info("service ready in %.1fs (%s)", self.fit_seconds, config.pipeline.name)
        if config.warmup:
            self.warmup()

    # ---- what the chat and the tests read ------------------------------------------
    @property
    def breaker(self) -> pybreaker.CircuitBreaker:
        return self.gate.breaker

    @property
    def llms(self) -> list[LLM]:
        """Every distinct LLM the pipeline uses: all metered and behind the breaker."""
        return self.gate.llms

    @property
    def titles(self) -> TitleIndex:
        return self.lookup.titles

    @property
    def popularity(self) -> np.ndarray:
        return self.lookup.popularity

    def _fitted(self, pipeline: Pipeline) -> Pipeline:
        """Fitted on all the data or, with a learned ranker, on all but the later events of
        ``tune_users`` users held out as cold-start validation users, then tuned on them
        (its early stopping and grid need users it did not learn from)."""
        c, data = self.config, self.data
        learned = any(learns_on_validation(s) for p in pipelines_of(c.pipeline) for s in p.stages)
        if not learned:
            return pipeline.fit(data.interactions, data.catalog)
        split = make_split(data, "cold-start", c.seed, n_users=0, history=c.tune_history,
                           n_valid=c.tune_users)  # fmt: skip
        pipeline.fit(split.train, data.catalog)
        pipeline.tune(split)
        return pipeline

    # ---- requests ------------------------------------------------------------------
    def resolve(self, user_id: Any = None, history: Sequence[Any] = (), text: str | None = None,
                goal: str | None = None) -> Request:  # fmt: skip
        """See :meth:`Lookup.resolve`."""
        return self.lookup.resolve(user_id, history, text, goal)

    def item_of(self, ref: Any) -> int:
        return self.lookup.item_of(ref)

    def most_rated(self, items: set[int]) -> int:
        return self.lookup.most_rated(items)

    def search(self, q: str, limit: int = 10) -> list[dict[str, Any]]:
        return self.lookup.search(q, limit)

    def recommend(
        self,
        request: Request,
        k: int | None = None,
        narrow: Callable[[np.ndarray], np.ndarray] | None = None,
        use_llm: bool = True,
    ) -> Answer:
        """Top ``k`` for one request within the budget (see the module's docstring).

        ``narrow`` maps the ranker's ordered pool to the items allowed, in order (the chat's
        filter tool; it can only remove and reorder); ``use_llm=False`` skips the LLM."""
        t_start = time.perf_counter()
        deadline = t_start + self.config.budget_ms / 1000
        k = k or self.config.k
        pre = self.pipeline.prepare([request], k, narrow)
        route = pre.route or self.config.pipeline.name
        res, reason, used = pre, None, Usage()
        if use_llm and self.pipeline.pending(pre):
            res, reason, used = self.gate.run(request, pre, k, deadline)
        assert pre.final is not None and res.final is not None
        final = cut(pre.final if reason else res.final, k)
        llm_answered = reason is None
        if reason is None and (reason := fallback_cause(pre, res)) == "llm-fallback":
            llm_answered = False  # the LLM stage kept its input: the ranker's answer
            reason = "llm-unavailable" if used.errors else reason
        candidates = candidates_of(pre)
        answered = res if llm_answered else pre
        items = self.shaper.items(request, final, answered, candidates)
        path = traces_of(answered)[-1]  # a router's: the path that answered, unprefixed
        timings = {s: 1000 * v for s, v in path.timings.items()}
        timings["total"] = 1000 * (time.perf_counter() - t_start)
        self._observe(route, reason, timings)
        return Answer(items, route, reason is not None, reason, timings, candidates, used.calls,
                      pool_of(pre))  # fmt: skip

    def items(self, request: Request, scored: list[tuple[int, float]],
              candidates: set[int]) -> list[Item]:  # fmt: skip
        """Items (template reasons) for ranked (index, score) pairs: the chat's filter."""
        return self.shaper.listed(request, scored, candidates)

    def call_llm(self, fn: Callable[[], T], timeout_s: float) -> T | None:
        """See :meth:`LLMGate.call`."""
        return self.gate.call(fn, timeout_s)

    def _observe(self, route: str, reason: str | None, timings: dict[str, float]) -> None:
        m = self.metrics
        m.routes.labels(route).inc()
        for stage, ms in timings.items():
            if stage != "total":
                m.stage.labels(stage).observe(ms / 1000)
        if reason is not None:
            m.fallbacks.labels(reason).inc()
        m.breaker_open.set(1.0 if self.breaker.current_state == pybreaker.STATE_OPEN else 0.0)

    def warmup(self) -> None:
        """Load what the first request would otherwise wait for (model, embedder)."""
        t0 = time.perf_counter()
        popular = [int(i) for i in np.argsort(-self.popularity)[:3]]
        for req in (Request(None, np.asarray(popular), "warm-up"),
                    Request(0, self.lookup.history[0])):  # fmt: skip
            pre = self.pipeline.prepare([req], self.config.k)
            if self.pipeline.pending(pre):
                try:
                    self.pipeline.finish([req], pre, self.config.k)
                except RecfunnelError as exc:  # a back-end that is down is not fatal here
                    log.warning("warm-up: %s", exc)
        log.info("warm-up in %.1fs", time.perf_counter() - t0)

    def close(self) -> None:
        self.gate.close()
