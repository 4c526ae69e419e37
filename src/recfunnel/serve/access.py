"""Who a request comes from, and whether it may go on: bearer keys, the client's address,
and the rate limits.

A client is its verified key (each key has its own bucket), else its address — never
something the client makes up, such as an unverified ``Authorization`` header, or an
``X-Forwarded-For`` header from a peer the operator has not listed in
``trusted_proxies``. Refused keys are counted per address, so a wrong key gets 429 after
``auth_fail_limit`` tries; a valid key from that address still passes (behind NAT or a
proxy, an address is many users). Limits live in the configured storage
(``memory://``, or Redis shared by several workers or replicas), reached through a
:class:`~recfunnel.serve.storage.StorageGuard`. An IPv6 client is bucketed by its
``/ipv6_prefix`` network (one host usually holds a whole /64), every spelling of an
address the same.
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
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

from recfunnel.core.errors import ConfigError
from recfunnel.serve.config import ServeConfig, key_problem
from recfunnel.serve.storage import REDIS_OPTIONS, TIMEOUT_S, StorageGuard

T = TypeVar("T")
Network = IPv4Network | IPv6Network


class Role(Enum):
    """What a verified key may do."""

    API = "api"
    """Every endpoint, within its own rate-limit bucket."""
    METRICS = "metrics"
    """The scraper: /metrics and /healthz's detail, never rate-limited."""


def env_keys(name: str) -> list[str]:
    """Keys from an environment variable: one, or several separated by commas. A variable
    that is set but holds no key (``" "``, ``","``) or an empty entry is refused: it
    would otherwise leave the server open without a word."""
    raw = os.environ.get(name)
    if raw is None:
        return []
    keys = [k.strip() for k in raw.split(",")]
    if not any(keys):
        raise ConfigError(
            f"${name} is set but holds no key ({raw!r}): unset it to serve without keys, "
            "or give one (several: comma-separated)"
        )
    if not all(keys):
        raise ConfigError(f"${name} has an empty entry between commas ({raw!r}): remove it")
    for key in keys:
        check_key(f"${name}", key)
    return keys


def check_key(setting: str, key: str) -> None:
    """Raises :class:`ConfigError` naming ``setting`` for a key no header can match."""
    if (problem := key_problem(key)) is not None:
        raise ConfigError(f"{setting}: {problem}")


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
        """The keys in force; raises :class:`ConfigError` for a setting that holds none."""
        api = [*([config.api_key] if config.api_key is not None else []), *config.api_keys]
        metrics = [config.metrics_key] if config.metrics_key is not None else []
        for setting, keys in (("api_key", api), ("metrics_key", metrics)):
            for key in keys:
                check_key(setting, key)
        return cls(
            tuple(dict.fromkeys(api or env_keys(config.api_key_env))),
            tuple(dict.fromkeys(metrics or env_keys(config.metrics_key_env))),
        )

    @property
    def any(self) -> bool:
        return bool(self.api or self.metrics)

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


def parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    """An address as proxies and sockets spell it: ``[v6]:port``, ``v4:port``, a zone id
    (``fe80::1%eth0``) or an IPv4-mapped IPv6 address all read as the plain address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # v4:port
    text = text.partition("%")[0]
    try:
        ip = ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def bucket(ip: IPv4Address | IPv6Address, v6_prefix: int) -> str:
    """A client's name for its rate-limit bucket: the IPv4 address, or its IPv6 address's
    ``/v6_prefix`` network in canonical form."""
    if isinstance(ip, IPv4Address) or v6_prefix >= 128:
        return str(ip)
    return str(ip_network(f"{ip}/{v6_prefix}", strict=False))


def _within(ip: IPv4Address | IPv6Address | None, trusted: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in trusted)


def client_address(
    scope: Mapping[str, Any], trusted: tuple[Network, ...], v6_prefix: int = 64
) -> str:
    """The peer's address; behind proxies the operator trusts, the last address in
    ``X-Forwarded-For`` that none of them added (read from the right: only the hops our
    own proxies appended can be believed, anything to their left is the client's say).
    Normalised and, for IPv6, bucketed by its ``/v6_prefix`` (see :func:`bucket`)."""
    client = scope.get("client")
    peer_text = str(client[0]) if client else "unknown"
    peer = parse_ip(peer_text)
    if peer is None:
        return peer_text
    if not trusted or not _within(peer, trusted):
        return bucket(peer, v6_prefix)
    forwarded = b",".join(v for k, v in scope.get("headers", []) if k == b"x-forwarded-for")
    hop = peer
    for entry in reversed(forwarded.decode("latin-1").split(",")):
        ip = parse_ip(entry)
        if ip is None:
            break  # garbage from the left of our proxies: the last address we know
        if not _within(ip, trusted):
            return bucket(ip, v6_prefix)
        hop = ip
    return bucket(hop, v6_prefix)


class Limiter:
    """Moving-window limits in the configured storage. Calls run on a small pool of their
    own: a slow storage never blocks the event loop, and requests waiting for the LLM
    (the request pool) never delay a refusal."""

    def __init__(self, storage: str, guard: StorageGuard | None = None) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.guard = guard or StorageGuard(storage)
        remote = not storage.startswith("memory://")
        options = {**REDIS_OPTIONS, "wrap_exceptions": True} if remote else {}
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage, **options))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recfunnel-limits")

    async def _run(self, fn: Callable[[], T]) -> T:
        """``fn`` on the pool, through the guard, within a bounded time (raises
        :class:`~recfunnel.serve.storage.StorageDown`)."""
        call = asyncio.get_running_loop().run_in_executor(self._pool, self.guard.call, fn)
        try:
            return await asyncio.wait_for(call, timeout=4 * TIMEOUT_S)
        except TimeoutError:
            self.guard.failed("no answer in time")
            raise self.guard.refusal() from None

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
