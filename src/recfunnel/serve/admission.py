"""A bounded queue in front of the pipeline: at most ``concurrency`` requests run it at
once (each holds its candidate arrays, embeddings and features while it runs, so what a
burst can allocate is bounded by this, not by the size of the burst), at most ``queue``
wait, each for at most ``queue_timeout_s``; a request past either bound gets 503 with
``Retry-After`` rather than memory or a late answer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio import to_thread

from recfunnel.core.errors import RecfunnelError
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics

T = TypeVar("T")


class Busy(RecfunnelError):
    """The pipeline's queue is full, or a request waited past its deadline (503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """Runs blocking pipeline calls on worker threads, ``concurrency`` at a time."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.concurrency = config.concurrency
        self.queue = config.queue
        self.timeout_s = config.queue_timeout_s
        self.metrics = metrics
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiting = 0

    def _retry_after(self) -> int:
        return max(1, math.ceil(min(self.timeout_s, 5.0)))

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread once a slot is free; raises :class:`Busy`."""
        if self._limiter is None:  # made on the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        limiter = self._limiter
        if limiter.available_tokens == 0 and self._waiting >= self.queue:
            self.metrics.overloaded.labels("queue-full").inc()
            raise Busy(f"busy: {self._waiting} requests are waiting; try again shortly",
                       self._retry_after())  # fmt: skip
        self._waiting += 1
        self.metrics.queued.inc()
        try:
            with anyio.fail_after(self.timeout_s):
                await limiter.acquire()
        except TimeoutError:
            self.metrics.overloaded.labels("deadline").inc()
            raise Busy(f"busy: no free slot within {self.timeout_s:g} s; try again shortly",
                       self._retry_after()) from None  # fmt: skip
        finally:
            self._waiting -= 1
            self.metrics.queued.dec()
        try:
            return await to_thread.run_sync(fn)
        finally:
            limiter.release()
