"""The shared storage (rate limits and chat sessions) as a dependency that can fail.

Every storage call goes through one :class:`StorageGuard` per process, with short socket
timeouts (:data:`REDIS_OPTIONS`): when Redis stops answering, the first calls fail after
at most :data:`TIMEOUT_S`, the guard marks the storage down, and every later call is
refused at once (:class:`StorageDown`: the app answers 503 with ``Retry-After``) except
one trial call per :data:`RETRY_S`. The first trial that succeeds brings the storage
back. ``/healthz`` reads the guard and says "degraded", naming the storage, while it is
down. A state change is logged once, never a traceback per request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from recfunnel.core.errors import RecfunnelError

log = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_S = 0.5
"""Seconds a storage call may take (connect, or wait for an answer) before it fails."""
RETRY_S = 1.0
"""While the storage is down, one trial call per this many seconds; the rest are refused."""
PING_EVERY_S = 1.0
"""``/healthz`` asks a storage nothing else has used for this long whether it answers."""
REDIS_OPTIONS: dict[str, Any] = {
    "socket_timeout": TIMEOUT_S,
    "socket_connect_timeout": TIMEOUT_S,
    "health_check_interval": 0,
}


class StorageDown(RecfunnelError):
    """The storage does not answer (the app answers 503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a failing storage raises: the socket's errors, Redis' and limits' own."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover - the serve extra installs it
        pass
    try:
        from limits.errors import StorageError

        errors.append(StorageError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def display_name(url: str) -> str:
    """The storage URI without credentials: what logs and ``/healthz`` may show."""
    if url.startswith("memory://"):
        return "memory://"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class StorageGuard:
    """Whether the storage answers, learnt from the calls made through it (see the
    module's docstring). Thread-safe: the limiter's pool and the chat's threads share it."""

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.name = display_name(url)
        self.remote = not url.startswith("memory://")
        self._clock = clock
        self._lock = threading.Lock()
        self._errors = storage_errors()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._last_ok = 0.0
        self._reason = ""
        self._ping: Callable[[], Any] | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def wait_s(self) -> int:
        """Seconds a refused client should wait: until the next trial call, at least 1."""
        return max(1, math.ceil(self._next_try - self._clock()))

    def refusal(self) -> StorageDown:
        return StorageDown(
            f"the service's storage ({self.name}) is not answering; try again shortly",
            self.wait_s(),
        )

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` (one storage call); raises :class:`StorageDown` when the storage is
        down (at once, or after the call failed)."""
        with self._lock:
            now = self._clock()
            if self._down_since is not None:
                if now < self._next_try:
                    raise self.refusal()
                self._next_try = now + RETRY_S  # this call is the trial: others wait
        try:
            out = fn()
        except self._errors as exc:
            self.failed(exc)
            raise self.refusal() from None
        self.succeeded()
        return out

    def failed(self, exc: BaseException | str) -> None:
        with self._lock:
            now = self._clock()
            self._next_try = now + RETRY_S
            self._reason = exc if isinstance(exc, str) else type(exc).__name__
            if self._down_since is None:
                self._down_since = now
                log.warning("storage %s is not answering (%s): refusing with 503 until it "
                            "does", self.name, self._reason)  # fmt: skip

    def succeeded(self) -> None:
        with self._lock:
            self._last_ok = self._clock()
            if self._down_since is not None:
                log.warning("storage %s answers again after %.1f s", self.name,
                            self._last_ok - self._down_since)  # fmt: skip
                self._down_since = None

    def healthy(self) -> bool:
        """For ``/healthz``: False while down; a storage idle for :data:`PING_EVERY_S`
        is pinged first (through the guard, so a down storage is tried once a second)."""
        if not self.remote:
            return True
        if not self.down and self._clock() - self._last_ok < PING_EVERY_S:
            return True
        try:
            self.call(self._pinger())
        except StorageDown:
            return False
        return True

    def _pinger(self) -> Callable[[], Any]:
        if self._ping is None:
            import redis

            client = redis.Redis.from_url(self.url, **REDIS_OPTIONS)
            self._ping = client.ping
        return self._ping

    def status(self) -> str:
        """``ok``, or what is wrong and since when (for a caller with a key)."""
        since = self._down_since
        if since is None:
            return "ok"
        return f"not answering for {self._clock() - since:.0f} s ({self._reason})"
