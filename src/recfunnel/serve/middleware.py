"""The app's outer layers as plain ASGI: they see every response (a 500 included) and
every byte of a body, whatever its transfer encoding.

Outermost first: :class:`Counted` (metrics by status), :class:`Gate` (key, then rate
limit: headers only, before any body is read), :class:`BodyLimit` (413 before a body
over the limit is read whole).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from recfunnel.serve.access import Keys, Limiter, Role, client_address, networks
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = ("/healthz", "/static/", "/favicon.ico")
ENDPOINTS = ("/recommend", "/chat", "/items/search", "/healthz", "/metrics", "/")


def refusal(status: int, detail: Any, **headers: str) -> Response:
    """A JSON error whose body is ASCII: it encodes whatever the detail quotes."""
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, status, headers or None, media_type="application/json")


def is_public(path: str) -> bool:
    return path == "/" or path.startswith(PUBLIC)


class Counted:
    """Counts every response by endpoint and status, with its latency. An error no
    handler caught is counted as the 500 it becomes, then passed on to Starlette's
    outermost layer, which sends that 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            if status is not None:  # None: the client left before any answer
                self.metrics.requests.labels(endpoint, str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


class BodyLimit:
    """Refuses a body over ``limit`` bytes with 413: a declared Content-Length at once,
    any other body (chunked) as soon as the bytes received pass the limit. Only then is
    the app called, with the body it may read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def too_large(self) -> Response:
        return refusal(413, f"request body over {self.limit} bytes", Connection="close")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.too_large()(scope, receive, send)
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.too_large()(scope, receive, send)
            more = bool(message.get("more_body", False))
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


class Gate:
    """Who is asking and may they: records the client (its verified key's name, else
    its address) and its role in ``scope["state"]``, then refuses a missing or wrong key
    (401; 429 once its address has had too many refused), and a client over its rate
    (429). Public paths pass; the scraper's key is never rate-limited on /metrics."""

    def __init__(self, app: ASGIApp, config: ServeConfig, metrics: Metrics) -> None:
        from limits import parse

        self.app = app
        self.keys = Keys.of(config)
        self.trusted = networks(config.trusted_proxies)
        self.limiter = Limiter(config.storage)
        self.rate = parse(config.rate_limit) if config.rate_limit else None
        self.auth_rate = parse(config.auth_fail_limit) if config.auth_fail_limit else None
        self.rate_text = config.rate_limit
        self.metrics = metrics

    def roles(self, path: str) -> set[Role]:
        """The roles a path needs; empty: open (no key of that kind is configured)."""
        if path == "/metrics":
            return {Role.API, Role.METRICS} if self.keys.api or self.keys.metrics else set()
        return {Role.API} if self.keys.api else set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        address = client_address(scope, self.trusted)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        verified = self.keys.verify(header) if header else None
        role = verified[0] if verified else None
        state = scope.setdefault("state", {})
        state["role"] = role
        state["client"] = verified[1] if role is Role.API and verified else f"addr:{address}"
        refused = None if is_public(scope["path"]) else await self.refused(scope, address, role)
        if refused is not None:
            return await refused(scope, receive, send)
        await self.app(scope, receive, send)

    async def refused(self, scope: Scope, address: str, role: Role | None) -> Response | None:
        needed = self.roles(scope["path"])
        if needed and role not in needed:
            return await self.unauthorized(address)
        if needed and self.auth_rate is not None:  # locked out: a right guess would stand out
            wait = await self.limiter.spent(self.auth_rate, f"auth:{address}")
            if wait is not None:
                return self.too_many("auth", "too many refused keys from this address", wait)
        if self.rate is None or (role is Role.METRICS and scope["path"] == "/metrics"):
            return None
        wait = await self.limiter.hit(self.rate, scope["state"]["client"])
        if wait is not None:
            return self.too_many("client", f"rate limit {self.rate_text} exceeded", wait)
        return None

    async def unauthorized(self, address: str) -> Response:
        """401, counted against the address; 429 once it has had too many."""
        if self.auth_rate is not None:
            wait = await self.limiter.hit(self.auth_rate, f"auth:{address}")
            if wait is not None:
                return self.too_many("auth", "too many refused keys from this address", wait)
        self.metrics.auth_failed.inc()
        return refusal(401, "missing or wrong API key (Authorization: Bearer <key>)",
                       **{"WWW-Authenticate": "Bearer"})  # fmt: skip

    def too_many(self, limit: str, detail: str, wait: int) -> Response:
        self.metrics.rate_limited.labels(limit).inc()
        return refusal(429, detail, **{"Retry-After": str(wait)})

    def close(self) -> None:
        self.limiter.close()
