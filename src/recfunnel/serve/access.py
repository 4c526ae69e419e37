"""Who a request comes from, and whether it may go on: bearer keys, the client's address,
and the rate limits.

A client is its verified key (each key has its own bucket), else its address — never
something the client makes up, such as an unverified ``Authorization`` header, or an
``X-Forwarded-For`` header from a peer the operator has not listed in
``trusted_proxies``. Refused keys are counted per address, so guessing gets 429 after
``auth_fail_limit`` tries, whatever is guessed next. Limits live in the configured
storage (``memory://``, or Redis shared by several workers or replicas).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

from recfunnel.serve.config import ServeConfig

T = TypeVar("T")
Network = IPv4Network | IPv6Network


class Role(Enum):
    """What a verified key may do."""

    API = "api"
    """Every endpoint, within its own rate-limit bucket."""
    METRICS = "metrics"
    """The scraper: /metrics and /healthz's detail, never rate-limited."""


def env_keys(name: str) -> list[str]:
    """Keys from an environment variable: one, or several separated by commas."""
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


def key_id(key: str) -> str:
    """A client's name for a key: a digest, so no store (Redis) ever holds the key."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def bearer(header: str) -> str | None:
    """The token of ``Authorization: Bearer <token>``; the scheme is case-insensitive."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class Keys:
    """The configured keys, by role (config fields and their environment variables)."""

    api: tuple[str, ...]
    metrics: tuple[str, ...]

    @classmethod
    def of(cls, config: ServeConfig) -> Keys:
        api = [*([config.api_key] if config.api_key else []), *config.api_keys]
        metrics = [config.metrics_key] if config.metrics_key else []
        return cls(
            tuple(dict.fromkeys(api or env_keys(config.api_key_env))),
            tuple(dict.fromkeys(metrics or env_keys(config.metrics_key_env))),
        )

    def verify(self, header: str) -> tuple[Role, str] | None:
        """(role, client id) of the key the header carries; None for no or a wrong key.
        Every key is compared (in constant time each), so timing tells nothing."""
        token = bearer(header)
        if token is None:
            return None
        found: tuple[Role, str] | None = None
        for role, keys in ((Role.API, self.api), (Role.METRICS, self.metrics)):
            for key in keys:
                if hmac.compare_digest(token.encode(), key.encode()) and found is None:
                    found = (role, key_id(key))
        return found


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ip_network(e, strict=False) for e in entries)


def _within(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(scope: Mapping[str, Any], trusted: tuple[Network, ...]) -> str:
    """The peer's address; behind proxies the operator trusts, the last address in
    ``X-Forwarded-For`` that none of them added (read from the right: only the hops our
    own proxies appended can be believed, anything to their left is the client's say)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    forwarded = b",".join(v for k, v in scope.get("headers", []) if k == b"x-forwarded-for")
    hop = peer
    for entry in reversed(forwarded.decode("latin-1").split(",")):
        entry = entry.strip()
        try:
            ip_address(entry)
        except ValueError:
            return hop  # garbage from the left of our proxies: the last address we know
        if not _within(entry, trusted):
            return entry
        hop = entry
    return hop


class Limiter:
    """Moving-window limits in the configured storage. Calls run on a small pool of their
    own: a slow storage never blocks the event loop, and requests waiting for the LLM
    (the request pool) never delay a refusal."""

    def __init__(self, storage: str) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self._limiter = MovingWindowRateLimiter(storage_from_string(storage))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recfunnel-limits")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _wait_s(self, rate: Any, key: str) -> int:
        reset, _ = self._limiter.get_window_stats(rate, "recfunnel", key)
        return max(1, int(reset - time.time() + 0.999))

    async def hit(self, rate: Any, key: str) -> int | None:
        """Count one request; None when allowed, else the seconds to wait."""

        def hit() -> int | None:
            return None if self._limiter.hit(rate, "recfunnel", key) else self._wait_s(rate, key)

        return await self._run(hit)

    async def spent(self, rate: Any, key: str) -> int | None:
        """Like :meth:`hit` without counting: None while ``key`` has some left."""

        def test() -> int | None:
            return None if self._limiter.test(rate, "recfunnel", key) else self._wait_s(rate, key)

        return await self._run(test)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
