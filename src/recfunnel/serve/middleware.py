"""The app's outer layers as plain ASGI: they see every response (a 500 included) and
every byte of a body, whatever its transfer encoding.

Outermost first: :class:`Secured` (security headers on every answer), :class:`Counted`
(metrics by status), :class:`Gate` (key, then rate limit: headers only, before any body
is read), :class:`BodyLimit` (413 before a body over the limit is read whole, 408 for a
body that does not arrive in time).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from recfunnel.serve.access import Keys, Limiter, Role, client_address, networks
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.metrics import Metrics
from recfunnel.serve.storage import StorageDown, StorageGuard

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = ("/healthz", "/static/", "/favicon.ico")
ENDPOINTS = ("/recommend", "/chat", "/items/search", "/healthz", "/metrics", "/")


def refusal(status: int, detail: Any, **headers: str) -> Response:
    """A JSON error whose body is ASCII: it encodes whatever the detail quotes."""
    return json_answer(status, {"detail": detail}, **headers)


def json_answer(status: int, content: dict[str, Any], **headers: str) -> Response:
    body = json.dumps(content, ensure_ascii=True, allow_nan=False)
    return Response(body, status, headers or None, media_type="application/json")


def is_public(path: str) -> bool:
    return path == "/" or path.startswith(PUBLIC)


PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The demo page's Content-Security-Policy: its own script and style files only (it has
no inline script), never framed."""
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
    "https://fastapi.tiangolo.com; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""FastAPI's /docs and /redoc load Swagger UI and ReDoc from jsDelivr with inline setup."""
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class Secured:
    """Adds ``X-Content-Type-Options``, ``X-Frame-Options``, ``Referrer-Policy`` and a
    Content-Security-Policy (with ``frame-ancestors 'none'``) to every answer: the demo
    page holds an API-key field, so no other site may frame it or run script in it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"] in ("/docs", "/redoc", "/docs/oauth2-redirect")
        policy = (DOCS_POLICY if docs else PAGE_POLICY).encode()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"content-security-policy",)]  # fmt: skip
                message["headers"] = [*headers, *SECURITY_HEADERS,
                                      (b"content-security-policy", policy)]  # fmt: skip
            await send(message)

        await self.app(scope, receive, sending)


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
    any other body (chunked) as soon as the bytes received pass the limit; a body not
    received whole within ``timeout_s`` gets 408 (a client sending a byte every few
    seconds holds no connection for long). Only then is the app called, with the body
    it may read. A GET that declares no body is passed on without waiting for one."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    def too_large(self) -> Response:
        return refusal(413, f"request body over {self.limit} bytes", Connection="close")

    def too_slow(self) -> Response:
        return refusal(408, f"request body not received within {self.timeout_s:g} s",
                       Connection="close")  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.too_large()(scope, receive, send)
        bodiless = scope["method"] in ("GET", "HEAD", "OPTIONS")
        if bodiless and not int(declared or 0) and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)  # no body to wait for
        chunks: list[bytes] = []
        size, more = 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await self.too_slow()(scope, receive, send)
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
    (401, counted against the address; 429 once it has had too many), and a client over
    its rate (429). A valid key is never locked out by its address's refused ones.
    ``/healthz`` is open, but a key presented there is checked and counted like anywhere
    else (it is no free oracle). Other public paths ignore keys. A storage that does not
    answer gets 503 with ``Retry-After``; the scraper's key is never rate-limited on
    /metrics."""

    def __init__(self, app: ASGIApp, config: ServeConfig, metrics: Metrics,
                 guard: StorageGuard | None = None) -> None:  # fmt: skip
        from limits import parse

        self.app = app
        self.keys = Keys.of(config)
        self.trusted = networks(config.trusted_proxies)
        self.v6_prefix = config.ipv6_prefix
        self.limiter = Limiter(config.storage, guard)
        self.rate = parse(config.rate_limit) if config.rate_limit else None
        self.auth_rate = parse(config.auth_fail_limit) if config.auth_fail_limit else None
        self.rate_text = config.rate_limit
        self.metrics = metrics

    def roles(self, path: str) -> set[Role]:
        """The roles a path needs; empty: open (no key of that kind is configured)."""
        if path == "/metrics":
            return {Role.API, Role.METRICS} if self.keys.any else set()
        return {Role.API} if self.keys.api else set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        address = client_address(scope, self.trusted, self.v6_prefix)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        verified = self.keys.verify(header) if header else None
        role = verified[0] if verified else None
        state = scope.setdefault("state", {})
        state["role"] = role
        state["client"] = verified[1] if role is Role.API and verified else f"addr:{address}"
        try:
            refused = await self.refused(scope, address, role, bool(header))
        except StorageDown as exc:
            self.metrics.storage_unavailable.labels("limits").inc()
            refused = refusal(503, str(exc), **{"Retry-After": str(exc.retry_after)})
        if refused is not None:
            return await refused(scope, receive, send)
        await self.app(scope, receive, send)

    async def refused(self, scope: Scope, address: str, role: Role | None,
                      presented: bool) -> Response | None:  # fmt: skip
        path = scope["path"]
        if path == "/healthz":  # open; a wrong key shown here is a wrong key
            return await self.unauthorized(address) if presented and role is None \
                and self.keys.any else None  # fmt: skip
        if is_public(path):
            return None
        needed = self.roles(path)
        if needed and role not in needed:
            return await self.unauthorized(address)
        if self.rate is None or (role is Role.METRICS and path == "/metrics"):
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
