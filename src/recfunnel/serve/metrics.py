"""Prometheus metrics of one running service (its own registry, so two apps in one
process — tests — never share counters). Under ``recfunnel serve --workers N``
(``$PROMETHEUS_MULTIPROC_DIR`` set) every worker writes its values there and any worker's
``/metrics`` adds them all up: one service, one set of counters."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """What ``GET /metrics`` exposes: every response by endpoint and status (5xx too),
    latency per endpoint and per stage, LLM calls, cache hits, back-end failures,
    timeouts and circuit-open short-cuts, fallbacks by reason, the circuit breaker, the
    guard, refused keys and rate limits, storage outages and the pipeline's queue."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recfunnel_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("recfunnel_request_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.stage = Histogram("recfunnel_stage_seconds", "funnel stage latency", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.routes = Counter("recfunnel_routes", "answers by route", ["route"], registry=r)
        self.llm_calls = Counter("recfunnel_llm_calls", "LLM answers (cached or not), "
                                 "counted when made, used in time or not",
                                 registry=r)  # fmt: skip
        self.llm_cache_hits = Counter("recfunnel_llm_cache_hits", "LLM answers from the cache",
                                      registry=r)  # fmt: skip
        self.llm_errors = Counter("recfunnel_llm_errors", "failed LLM back-end calls, "
                                  "counted when they fail, before or after the deadline",
                                  registry=r)  # fmt: skip
        self.llm_timeouts = Counter("recfunnel_llm_timeouts", "requests that stopped "
                                    "waiting for the LLM at their deadline",
                                    registry=r)  # fmt: skip
        self.llm_short_circuits = Counter("recfunnel_llm_short_circuits", "LLM calls the "
                                          "open circuit refused (back-end not called)",
                                          registry=r)  # fmt: skip
        self.fallbacks = Counter("recfunnel_fallbacks", "answers from the ranker order",
                                 ["reason"], registry=r)  # fmt: skip
        self.breaker_open = Gauge("recfunnel_breaker_open", "1 while the LLM circuit is open",
                                  registry=r, multiprocess_mode="max")  # fmt: skip
        self.guard_dropped = Counter("recfunnel_guard_dropped",
                                     "items dropped for not being funnel candidates",
                                     registry=r)  # fmt: skip
        self.rate_limited = Counter("recfunnel_rate_limited", "requests refused (429) by "
                                    "limit: client (its rate) or auth (too many refused keys "
                                    "from its address)", ["limit"], registry=r)  # fmt: skip
        self.auth_failed = Counter("recfunnel_auth_failed", "requests refused (401): no key "
                                   "or a wrong one", registry=r)  # fmt: skip
        self.storage_unavailable = Counter("recfunnel_storage_unavailable", "requests "
                                           "refused (503) because the storage did not "
                                           "answer, by use: limits or sessions", ["use"],
                                           registry=r)  # fmt: skip
        self.overloaded = Counter("recfunnel_overloaded", "requests refused (503) by the "
                                  "pipeline's queue: full, or waited past its deadline",
                                  ["why"], registry=r)  # fmt: skip
        self.queued = Gauge("recfunnel_queued", "requests waiting for the pipeline",
                            registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.chat_actions = Counter("recfunnel_chat_actions", "chat turns by action", ["action"],
                                    registry=r)  # fmt: skip

    def render(self) -> bytes:
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
