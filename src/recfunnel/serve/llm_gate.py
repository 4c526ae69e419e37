"""The LLM behind a latency budget: one worker thread, a circuit breaker, and metering of
every LLM the pipeline uses.

The LLM stages run on one worker thread (a local model answers one prompt at a time); a
request waits for it at most until its deadline. When the worker is busy past the budget,
the back-end fails, or the breaker is open, the caller gets the reason and answers from
the ranker's order (so does an answer the funnel refuses, such as a head stage that
returned an item outside its head: ``stage-error``). The worker counts what the
back-ends did (calls, failures, short-cuts) as it happens, so a job that ends after its
request stopped waiting is counted too. Every distinct LLM the pipeline names is metered
and guarded (their usage is added up), not only the first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TypeVar

import pybreaker

from recfunnel.core.errors import StageContractError
from recfunnel.core.types import Request
from recfunnel.llm.base import LLM, LLMUnavailable, Meter, Usage
from recfunnel.pipeline import Pipeline
from recfunnel.serve.answers import traces_of
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics
from recfunnel.stages.base import Trace
from recfunnel.stages.explain.grounded import Explainer

T = TypeVar("T")
log = logging.getLogger(__name__)


class LLMGate:
    """The worker, the breaker and the budget of a service's LLM stages (see the module's
    docstring). ``llms``: every distinct LLM the pipeline uses, the first one also
    deciding chat actions."""

    def __init__(self, config: ServeConfig, pipeline: Pipeline, llms: Sequence[LLM],
                 metrics: Metrics, explainer: Explainer | None = None) -> None:  # fmt: skip
        self.config = config
        self.pipeline = pipeline
        self.llms = list({id(m): m for m in llms}.values())
        self.metrics = metrics
        self.explainer = explainer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recfunnel-llm")
        self._lock = threading.Lock()
        self._inflight = 0
        self._estimate_s = 0.0
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.breaker.failures, reset_timeout=config.breaker.reset_s
        )

    def meter(self) -> Meter:
        """Counts what every LLM of the pipeline is asked from now on."""
        return Meter(*self.llms)

    def run(self, request: Request, pre: Trace, k: int,
            deadline: float) -> tuple[Trace, str | None, Usage]:  # fmt: skip
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
            self._job, request, pre, k, deadline, time.perf_counter()
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
        except StageContractError as exc:  # a stage broke the contract: never shown
            log.error("the LLM stages' answer was refused: %s", exc)
            return pre, "stage-error", Usage()
        return res, None, used

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Counts the back-ends' answers and failures inside, on the worker as they
        happen: whether the request still waits for them or not."""
        meter = self.meter()
        try:
            yield
        finally:
            used = meter.used
            self.metrics.llm_calls.inc(used.calls)
            self.metrics.llm_cache_hits.inc(used.cache_hits)
            self.metrics.llm_errors.inc(used.errors)

    def _guarded(self, fn: Callable[[], T]) -> T:
        """``fn`` through the breaker. A failure that trips the breaker stays a failure
        (``LLMUnavailable``); only a call the open breaker refused is a short-cut."""
        meter = self.meter()
        try:
            return self.breaker.call(fn)
        except pybreaker.CircuitBreakerError:
            if meter.used.errors:
                raise LLMUnavailable("the LLM back-end failed; the circuit is now open") from None
            self.metrics.llm_short_circuits.inc()
            raise

    def _job(self, request: Request, pre: Trace, k: int, deadline: float,
             submitted: float) -> tuple[Trace, Usage]:  # fmt: skip
        """The worker's job: the LLM stages (and reasons, time permitting), counted."""
        try:
            with self._counted():
                return self._finish(request, pre, k, deadline, submitted)
        finally:
            with self._lock:
                self._inflight -= 1

    def _finish(self, request: Request, pre: Trace, k: int, deadline: float,
                submitted: float) -> tuple[Trace, Usage]:  # fmt: skip
        """The LLM stages through the breaker, then reasons if the deadline leaves time;
        a computed answer updates the estimate of how long one takes."""
        meter = self.meter()
        t0 = time.perf_counter()

        def run() -> Trace:
            res = self.pipeline.finish([request], pre, k)
            if meter.used.errors:
                raise LLMUnavailable("the LLM back-end failed during reranking")
            return res

        res = self._guarded(run)
        path = traces_of(res)[-1]
        path.timings["llm_wait"] = t0 - submitted
        used = meter.used
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
                used = meter.used
        return res, used

    def call(self, fn: Callable[[], T], timeout_s: float) -> T | None:
        """``fn`` (one model call) on the worker, through the breaker; None when the
        worker is busy, the call outlasts ``timeout_s``, or the back-end fails — the
        caller then decides without the LLM."""
        if not self.llms:
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
