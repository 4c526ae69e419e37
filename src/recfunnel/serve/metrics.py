"""Prometheus metrics of one running service (its own registry, so two apps in one
process — tests — never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """What ``GET /metrics`` exposes: requests, latency per endpoint and per stage, LLM
    calls and cache hits, fallbacks by reason, the circuit breaker, guard and rate limits."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recfunnel_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("recfunnel_request_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.stage = Histogram("recfunnel_stage_seconds", "funnel stage latency", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.routes = Counter("recfunnel_routes", "answers by route", ["route"], registry=r)
        self.llm_calls = Counter("recfunnel_llm_calls", "LLM answers used (cached or not)",
                                 registry=r)  # fmt: skip
        self.llm_cache_hits = Counter("recfunnel_llm_cache_hits", "LLM answers from the cache",
                                      registry=r)  # fmt: skip
        self.llm_errors = Counter("recfunnel_llm_errors", "failed LLM back-end calls",
                                  registry=r)  # fmt: skip
        self.fallbacks = Counter("recfunnel_fallbacks", "answers from the ranker order",
                                 ["reason"], registry=r)  # fmt: skip
        self.breaker_open = Gauge("recfunnel_breaker_open", "1 while the LLM circuit is open",
                                  registry=r)  # fmt: skip
        self.guard_dropped = Counter("recfunnel_guard_dropped",
                                     "items dropped for not being funnel candidates",
                                     registry=r)  # fmt: skip
        self.rate_limited = Counter("recfunnel_rate_limited", "requests refused (429)",
                                    registry=r)  # fmt: skip
        self.chat_actions = Counter("recfunnel_chat_actions", "chat turns by action", ["action"],
                                    registry=r)  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
