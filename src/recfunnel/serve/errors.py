"""Error answers with safe, bounded bodies: the library's errors by kind (4xx; a full chat
store, an unreachable storage or a full queue 503 with ``Retry-After``), and invalid
input by field — at most :data:`MAX_ERRORS` entries and their count, each quoting at most
:data:`EXCERPT` escaped characters (a small body of many bad entries cannot make a large
answer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field

from recfunnel.core.errors import RecfunnelError, UnknownItem, UnknownUser
from recfunnel.serve.admission import Busy
from recfunnel.serve.lookup import EmptyRequest
from recfunnel.serve.metrics import Metrics
from recfunnel.serve.middleware import json_answer, refusal
from recfunnel.serve.sessions import ChatFull, UnknownSession
from recfunnel.serve.storage import StorageDown

EXCERPT = 40
"""Characters of a refused value an error quotes (escaped)."""
MAX_ERRORS = 20
"""Problems a 422 lists; ``error_count`` says how many there were."""


class ErrorOut(BaseModel):
    detail: Any
    error_count: int | None = Field(None, description="a 422: every problem, listed or not")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in [
        (400, "a body that is not UTF-8 JSON"),
        (401, "missing or wrong API key"),
        (404, "unknown user, item id, title or chat session"),
        (413, "request body too large"),
        (422, "invalid request (the detail names the field)"),
        (429, "rate limit exceeded, or too many refused keys from this address"),
        (503, "busy, or the storage is not answering: try again after Retry-After"),
    ]
}


def excerpt(value: Any) -> str | None:
    """At most :data:`EXCERPT` characters of a scalar, escaped to printable ASCII (a
    surrogate, a control character or megabytes of input never reach the response)."""
    if isinstance(value, dict | list) or value is None:
        return None
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:  # an int past Python's digit limit
        return "(a huge number)"
    escaped = ascii(text[:EXCERPT])[1:-1]
    return escaped[:EXCERPT] + ("…" if len(escaped) > EXCERPT or len(text) > EXCERPT else "")


def field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """One entry per problem, the first :data:`MAX_ERRORS`: the field (``loc``, also
    dotted as ``field``), what is wrong, and an excerpt of the value — never the body."""
    out = []
    for err in exc.errors()[:MAX_ERRORS]:
        loc = [p if isinstance(p, int) else excerpt(str(p)) for p in err["loc"][:8]]
        entry = {"loc": loc, "field": ".".join(str(p) for p in loc[1:]) or str(loc[0]),
                 "msg": str(err["msg"])[:300], "type": err["type"]}  # fmt: skip
        if (quoted := excerpt(err.get("input"))) is not None:
            entry["input"] = quoted
        out.append(entry)
    return out


def add_error_handlers(app: FastAPI, metrics: Metrics | None = None) -> None:
    """Errors with safe bodies: the library's own by kind (4xx; busy 503), invalid input
    by field (FastAPI's default handler echoes the input, and can fail encoding it: a
    500)."""

    def handler(status: int, **headers: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(_: Request, exc: Exception) -> Response:
            return refusal(status, str(exc), **headers)

        return handle

    for exc_class, status in ((UnknownUser, 404), (UnknownItem, 404), (UnknownSession, 404),
                              (EmptyRequest, 422), (RecfunnelError, 400)):  # fmt: skip
        app.add_exception_handler(exc_class, handler(status))

    async def retry_later(_: Request, exc: Exception) -> Response:
        wait = getattr(exc, "retry_after", 1)
        if isinstance(exc, StorageDown) and metrics is not None:
            metrics.storage_unavailable.labels("sessions").inc()
        return refusal(503, str(exc), **{"Retry-After": str(wait)})

    for busy in (ChatFull, StorageDown, Busy):
        app.add_exception_handler(busy, retry_later)

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return json_answer(422, {"detail": field_errors(exc), "error_count": len(exc.errors())})

    app.add_exception_handler(RequestValidationError, invalid)
