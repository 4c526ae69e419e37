"""The recommender behind the API: resolve a request, route it, run the funnel within a
latency budget, explain, and guard the answer.

The LLM stage runs on one worker thread (a local model answers one prompt at a time);
a request waits for it at most until its deadline. When the worker is busy past the
budget, the back-end fails, or the circuit breaker is open, the answer is the ranker's
order, marked as a fallback with its reason and counted. The worker counts what the
back-end did (calls, failures, short-cuts) as it happens, so a job that ends after its
request stopped waiting is counted too. Everything a request can get wrong raises a
:class:`~recfunnel.errors.RecfunnelError` subclass the app turns into a 4xx.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pybreaker

from recfunnel.core.candidates import PAD, cut
from recfunnel.core.errors import RecfunnelError, UnknownItem
from recfunnel.core.types import Dataset, Request
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import make_split, ordered_events
from recfunnel.llm.base import LLM, LLMUnavailable, Usage
from recfunnel.pipeline import Pipeline, Shared, build_pipeline
from recfunnel.pipeline.config import learns_on_validation, llm_configs, pipelines_of
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics
from recfunnel.stages.base import FitContext, Trace
from recfunnel.stages.explain.grounded import (
    ExplainConfig,
    Explainer,
    TitleIndex,
    normalize,
    template_reason,
    title_forms,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class EmptyRequest(RecfunnelError):
    """A request with nothing to recommend from."""


@dataclass
class Item:
    """One recommended item as the API shows it."""

    index: int
    item_id: Any
    title: str
    score: float
    explanation: str
    explanation_source: str
    genres: list[str]
    year: int | None


@dataclass
class Answer:
    items: list[Item]
    route: str
    fallback: bool
    fallback_reason: str | None
    timings_ms: dict[str, float]
    candidates: set[int] = field(repr=False)
    """Every item the funnel's stages produced for this request: what the guard allows."""
    llm_calls: int = 0


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
        self.llm: LLM | None = shared.llms.get(configs[0]) if configs else None
        self.explainer: Explainer | None = None
        if self.llm is not None and config.explain_llm_top:
            ecfg = ExplainConfig(top_k=config.explain_llm_top, llm=configs[0])
            ctx = FitContext(inter, catalog, config.seed, shared.llms)
            self.explainer = Explainer(ecfg).fit(ctx)
        events = ordered_events(inter, config.seed, self.data.timestamps_real)
        bounds = np.searchsorted(events["user"].to_numpy(), np.arange(inter.n_users + 1))
        items = events["item"].to_numpy()
        self._history = [items[bounds[u] : bounds[u + 1]] for u in range(inter.n_users)]
        self.titles = TitleIndex(catalog)
        self._norm_titles = [normalize(t) for t in catalog.frame["title"].astype(str)]
        self.popularity = inter.item_counts()
        self._item_ids = catalog.ids_of(np.arange(catalog.n_items))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recfunnel-llm")
        self._lock = threading.Lock()
        self._inflight = 0
        self._estimate_s = 0.0
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.breaker.failures, reset_timeout=config.breaker.reset_s
        )
        self.fit_seconds = time.perf_counter() - t0
        log.info("service ready in %.1fs (%s)", self.fit_seconds, config.pipeline.name)
        if config.warmup:
            self.warmup()

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
    def resolve(
        self,
        user_id: Any = None,
        history: Sequence[Any] = (),
        text: str | None = None,
        goal: str | None = None,
    ) -> Request:
        """A funnel request: a known user's history plus any listed items (ids or titles),
        and the free text. Raises UnknownUser / UnknownItem / EmptyRequest."""
        user = None
        items: list[int] = []
        if user_id is not None:
            user = self.data.interactions.user_index(user_id)
            items = [int(i) for i in self._history[user]]
        for h in history:
            i = self.item_of(h)
            if i not in items:
                items.append(i)
        query = text.strip() if text and text.strip() else None
        if not items and query is None:
            raise EmptyRequest(
                "nothing to recommend from: give a known user_id, a non-empty history "
                "(item ids or titles) or some text"
            )
        return Request(user, np.asarray(items, dtype=np.int64), query,
                       goal.strip() if goal and goal.strip() else None)  # fmt: skip

    def item_of(self, ref: Any) -> int:
        """Catalog index of an item id (a number) or a title ("Heat", "Matrix, The (1999)");
        a title several items share means the most rated one."""
        if isinstance(ref, bool):
            raise UnknownItem(f"{ref!r} is not an item id or title")
        if isinstance(ref, int) or (isinstance(ref, str) and re.fullmatch(r"\s*\d+\s*", ref)):
            return int(self.data.catalog.index_of([int(ref)])[0])
        if isinstance(ref, str) and ref.strip():
            forms = [f for f in (normalize(ref), *sorted(title_forms(ref))) if f]
            for form in forms:
                hits = self.titles.by_form.get(form)
                if hits:
                    return self.most_rated(hits)
            raise UnknownItem(f"no catalog title matches {ref.strip()[:80]!r}")
        raise UnknownItem(f"{ref!r} is not an item id or title")

    def most_rated(self, items: set[int]) -> int:
        """The one a shared title means: the most rated (lowest index on ties)."""
        return max(items, key=lambda i: (self.popularity[i], -i))

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
        if use_llm and pre.pending:
            res, reason, used = self._llm_stage(request, pre, k, deadline)
        assert pre.final is not None and res.final is not None
        final = cut(pre.final if reason else res.final, k)
        if reason is None and res.final.fallback is not None and bool(res.final.fallback[0]):
            reason = "llm-unavailable" if used.errors else "llm-fallback"
        candidates = {int(i) for t in traces_of(pre) for b in t.batches.values()
                      for i in b.items[0] if i != PAD}  # fmt: skip
        answered = res if reason is None else pre
        items = self._items(request, final, answered, candidates)
        path = traces_of(answered)[-1]  # a router's: the path that answered, unprefixed
        timings = {s: 1000 * v for s, v in path.timings.items()}
        timings["total"] = 1000 * (time.perf_counter() - t_start)
        self._observe(route, reason, timings, used)
        return Answer(items, route, reason is not None, reason, timings, candidates, used.calls)

    # ---- the LLM stage -------------------------------------------------------------
    def _llm_stage(
        self, request: Request, pre: Trace, k: int, deadline: float
    ) -> tuple[Trace, str | None, Usage]:
        """(result, fallback reason or None, LLM usage) — never raises for the back-end.

        A request queues for a busy LLM only if the jobs ahead plus its own are expected to
        end within its budget (else ``budget``), and waits at most until its deadline
        (``timeout``; the job still finishes and its answer is cached). An open breaker
        fails the job at once, without calling the back-end, until its reset time, when
        one job is let through as the trial."""
        remaining = deadline - time.perf_counter()
        with self._lock:  # an idle LLM always gets the job: that keeps the estimate fresh
            if self._inflight and self._estimate_s * (self._inflight + 1) > remaining:
                return pre, "budget", Usage()
            self._inflight += 1
        fut: Future[tuple[Trace, Usage]] = self._pool.submit(
            self._llm_job, request, pre, k, deadline, time.perf_counter()
        )
        try:
            res, used = fut.result(timeout=max(remaining, 0.0))
        except FutureTimeout:
            if fut.cancel():
                with self._lock:
                    self._inflight -= 1
            self.metrics.llm_timeouts.inc()
            return pre, "timeout", Usage()
        except pybreaker.CircuitBreakerError:
            return pre, "circuit-open", Usage()
        except LLMUnavailable:
            return pre, "llm-unavailable", Usage(errors=1)
        return res, None, used

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Counts the back-end's answers and failures inside, on the worker as they
        happen: whether the request still waits for them or not."""
        assert self.llm is not None
        before = self.llm.usage.copy()
        try:
            yield
        finally:
            used = self.llm.usage.since(before)
            self.metrics.llm_calls.inc(used.calls)
            self.metrics.llm_cache_hits.inc(used.cache_hits)
            self.metrics.llm_errors.inc(used.errors)

    def _guarded(self, fn: Callable[[], T]) -> T:
        """``fn`` through the breaker. A failure that trips the breaker stays a failure
        (``LLMUnavailable``); only a call the open breaker refused is a short-cut."""
        assert self.llm is not None
        errors = self.llm.usage.errors
        try:
            return self.breaker.call(fn)
        except pybreaker.CircuitBreakerError:
            if self.llm.usage.errors > errors:
                raise LLMUnavailable("the LLM back-end failed; the circuit is now open") from None
            self.metrics.llm_short_circuits.inc()
            raise

    def _llm_job(
        self, request: Request, pre: Trace, k: int, deadline: float, submitted: float
    ) -> tuple[Trace, Usage]:
        """The worker's job: the LLM stages (and reasons, time permitting), counted."""
        try:
            with self._counted():
                return self._finish(request, pre, k, deadline, submitted)
        finally:
            with self._lock:
                self._inflight -= 1

    def _finish(
        self, request: Request, pre: Trace, k: int, deadline: float, submitted: float
    ) -> tuple[Trace, Usage]:
        """The LLM stages through the breaker, then reasons if the deadline leaves time;
        a computed answer updates the estimate of how long one takes."""
        assert self.llm is not None
        before = self.llm.usage.copy()
        t0 = time.perf_counter()

        def run() -> Trace:
            res = self.pipeline.finish([request], pre, k)
            if self.llm is not None and self.llm.usage.errors > before.errors:
                raise LLMUnavailable("the LLM back-end failed during reranking")
            return res

        res = self._guarded(run)
        path = traces_of(res)[-1]
        path.timings["llm_wait"] = t0 - submitted
        used = self.llm.usage.since(before)
        if used.calls > used.cache_hits:  # a computed answer: learn how long one takes
            spent = time.perf_counter() - t0
            with self._lock:
                self._estimate_s = spent if not self._estimate_s else \
                    0.8 * self._estimate_s + 0.2 * spent  # fmt: skip
        if self.explainer is not None and len(request.history):
            per = self._estimate_s / 2 or 0.5
            if deadline - time.perf_counter() > per * self.config.explain_llm_top:
                t1 = time.perf_counter()
                res.notes["explain"] = self.explainer(res.requests, res)
                path.timings["explain"] = time.perf_counter() - t1
                used = self.llm.usage.since(before)
        return res, used

    def call_llm(self, fn: Callable[[], T], timeout_s: float) -> T | None:
        """``fn`` (one model call) on the LLM worker, through the breaker; None when the
        worker is busy, the call outlasts ``timeout_s``, or the back-end fails — the
        caller then decides without the LLM."""
        if self.llm is None:
            return None
        with self._lock:
            if self._inflight:
                return None
            self._inflight += 1

        def job() -> T:
            try:
                with self._counted():
                    return self._guarded(fn)
            finally:
                with self._lock:
                    self._inflight -= 1

        fut = self._pool.submit(job)
        try:
            return fut.result(timeout=timeout_s)
        except (FutureTimeout, LLMUnavailable, pybreaker.CircuitBreakerError) as exc:
            if isinstance(exc, FutureTimeout):
                self.metrics.llm_timeouts.inc()
            self.metrics.fallbacks.labels("chat-decision").inc()
            return None

    # ---- answers -------------------------------------------------------------------
    def _items(self, request: Request, final: Any, res: Trace, candidates: set[int]) -> list[Item]:
        """The answer's items with scores and reasons; anything that is not one of the
        funnel's candidates is dropped and counted (it cannot happen; the guard proves it)."""
        shown = final.items[0][final.items[0] != PAD]
        stage_score: dict[int, float] = {}
        for batch in (b for t in traces_of(res) for b in t.batches.values()):  # later win
            hit = np.isin(batch.items[0], shown)
            stage_score.update(zip(batch.items[0][hit].tolist(), batch.scores[0][hit].tolist(),
                                   strict=True))  # fmt: skip
        llm_reasons = {e.item: e for e in (res.explanations or [[]])[0]}
        cat = self.data.catalog
        out = []
        for i in (int(i) for i in final.items[0] if i != PAD):
            if i not in candidates:
                self.metrics.guard_dropped.inc()
                log.error("guard: item %d is not a funnel candidate; dropped", i)
                continue
            exp = llm_reasons.get(i)
            text, source = (exp.text, exp.source) if exp else (
                template_reason(cat, i, request.history), "template")  # fmt: skip
            year = cat.years[i]
            out.append(Item(
                i, self._item_ids[i], str(cat.titles[i]), round(stage_score.get(i, 0.0), 6),
                text, source, sorted(cat.genre_sets[i]),
                None if np.isnan(year) else int(year),
            ))  # fmt: skip
        return out

    def _observe(self, route: str, reason: str | None, timings: dict[str, float],
                 used: Usage) -> None:  # fmt: skip
        m = self.metrics
        m.routes.labels(route).inc()
        for stage, ms in timings.items():
            if stage != "total":
                m.stage.labels(stage).observe(ms / 1000)
        if reason is not None:
            m.fallbacks.labels(reason).inc()
        m.breaker_open.set(1.0 if self.breaker.current_state == pybreaker.STATE_OPEN else 0.0)

    # ---- helpers for the page and the chat -----------------------------------------
    def search(self, q: str, limit: int = 10) -> list[dict[str, Any]]:
        """Titles containing every word of ``q``, most rated first (prefix matches lead)."""
        words = normalize(q).split()
        if not words:
            return []
        hits = [i for i, t in enumerate(self._norm_titles) if all(w in t for w in words)]
        first = words[0]
        hits.sort(key=lambda i: (not self._norm_titles[i].startswith(first),
                                 -self.popularity[i], i))  # fmt: skip
        frame = self.data.catalog.frame
        return [
            {"item_id": self.data.catalog.ids_of([i])[0], "title": str(frame["title"].iloc[i]),
             "genres": list(frame["genres"].iloc[i])}
            for i in hits[:limit]
        ]  # fmt: skip

    def warmup(self) -> None:
        """Load what the first request would otherwise wait for (model, embedder)."""
        t0 = time.perf_counter()
        popular = [int(i) for i in np.argsort(-self.popularity)[:3]]
        for req in (Request(None, np.asarray(popular), "warm-up"),
                    Request(0, self._history[0])):  # fmt: skip
            pre = self.pipeline.prepare([req], self.config.k)
            if pre.pending:
                try:
                    self.pipeline.finish([req], pre, self.config.k)
                except RecfunnelError as exc:  # a back-end that is down is not fatal here
                    log.warning("warm-up: %s", exc)
        log.info("warm-up in %.1fs", time.perf_counter() - t0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def traces_of(trace: Trace) -> list[Trace]:
    """A trace and, for a router's, the traces of the paths that answered."""
    return [trace, *(t for _, _, t in trace.parts or [])]
