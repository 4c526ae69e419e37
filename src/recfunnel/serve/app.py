"""The HTTP API (FastAPI): ``/recommend``, ``/chat``, ``/items/search``, ``/healthz``,
``/metrics`` and the demo page at ``/``.

Access: with an API key configured (``api_key``, or the ``api_key_env`` variable), every
endpoint but ``/healthz`` and the page's static files needs ``Authorization: Bearer
<key>``; each client (its key, else its address) has a moving-window rate limit. Bad input
is a 4xx whose ``detail`` says what is wrong; bodies over ``max_body_bytes`` are refused
before they are read.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfunnel.core import __version__
from recfunnel.core.errors import RecfunnelError, UnknownItem, UnknownUser
from recfunnel.serve.chat import ChatAgent, Turn
from recfunnel.serve.config import MAX_HISTORY, MAX_K, MAX_TEXT, ServeConfig
from recfunnel.serve.service import Answer, EmptyRequest, Item, Service

log = logging.getLogger(__name__)

PUBLIC = ("/healthz", "/static/", "/favicon.ico")
ENDPOINTS = ("/recommend", "/chat", "/items/search", "/healthz", "/metrics", "/")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


ItemRef = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1, max_length=200)]


class RecommendIn(_In):
    """At least one of: a known ``user_id``, a non-empty ``history``, some ``text``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"not": {"type": "null"}}}},
                {"required": ["history"], "properties": {"history": {"minItems": 1}}},
                {"required": ["text"], "properties": {"text": {"type": "string",
                                                                "pattern": r"\S"}}},
            ]
        },
    )  # fmt: skip
    user_id: int | Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="a known user; their history is used"
    )
    history: list[ItemRef] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="items the user liked: catalog item ids (numbers) or titles (strings)",
    )
    text: str | None = Field(None, max_length=MAX_TEXT, description="what the user wants")
    goal: str | None = Field(None, max_length=MAX_TEXT, description="goal for goal rerankers")
    k: int | None = Field(None, ge=1, le=MAX_K, description="items to return")

    @model_validator(mode="before")
    @classmethod
    def _json_ints(cls, data: Any) -> Any:
        """JSON Schema's integers: 3 and 3.0, never `true` (pydantic's lax mode reads
        `true` as 1 and "3" as 3; its strict mode refuses 3.0)."""
        if isinstance(data, dict):
            k, user, hist = data.get("k"), data.get("user_id"), data.get("history")
            if (
                isinstance(k, bool | str)
                or isinstance(user, bool)
                or (isinstance(hist, list) and any(isinstance(h, bool) for h in hist))
            ):
                raise ValueError("k, user_id and history ids must be numbers, not true/false")
        return data

    @model_validator(mode="after")
    def _something(self) -> RecommendIn:
        if self.user_id is None and not self.history and not (self.text or "").strip():
            raise ValueError(
                "nothing to recommend from: give a known user_id, a non-empty history "
                "(item ids or titles) or some text"
            )
        return self


class ItemOut(BaseModel):
    item_id: int | str
    title: str
    score: float
    explanation: str
    explanation_source: str = Field(description="llm, regenerated or template")
    genres: list[str]
    year: int | None


class RecommendOut(BaseModel):
    items: list[ItemOut]
    route: str = Field(description="cold (LLM path) or warm (CF), or the pipeline's name")
    fallback: bool = Field(description="the LLM stage did not answer: the ranker's order")
    fallback_reason: str | None
    timings_ms: dict[str, float]


class ChatIn(_In):
    message: str = Field(min_length=1, max_length=MAX_TEXT)
    session_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w-]+$")


class ChatOut(BaseModel):
    session_id: str
    turn: int
    action: str = Field(description="ask, filter, retrieve, recommend, or done")
    reply: str
    items: list[ItemOut]
    asked: str | None = Field(description="what a question asks about (genre, title, era)")
    tools: list[str]
    fallback: bool
    decided_by: str = Field(
        description="llm, rules, rules-fallback (LLM busy or down), forced (one action "
        "allowed) or user (took an item)"
    )
    state: dict[str, Any]


class SearchHit(BaseModel):
    item_id: int | str
    title: str
    genres: list[str]


class Health(BaseModel):
    status: str
    dataset: str
    items: int
    users: int
    pipeline: str
    breaker: str
    version: str


class ErrorOut(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in [
        (400, "a body that is not UTF-8 JSON"),
        (401, "missing or wrong API key"),
        (404, "unknown user, item id or title"),
        (413, "request body too large"),
        (422, "invalid request (the detail names the field)"),
        (429, "rate limit exceeded"),
    ]
}


def item_out(it: Item) -> ItemOut:
    return ItemOut(
        item_id=it.item_id,
        title=it.title,
        score=it.score if it.score == it.score and abs(it.score) != float("inf") else 0.0,
        explanation=it.explanation,
        explanation_source=it.explanation_source,
        genres=it.genres,
        year=it.year,
    )


def recommend_out(a: Answer) -> RecommendOut:
    return RecommendOut(
        items=[item_out(i) for i in a.items],
        route=a.route,
        fallback=a.fallback,
        fallback_reason=a.fallback_reason,
        timings_ms={s: round(v, 3) for s, v in a.timings_ms.items()},
    )


def chat_out(t: Turn) -> ChatOut:
    return ChatOut(
        session_id=t.session_id,
        turn=t.turn,
        action=t.action,
        reply=t.reply,
        items=[item_out(i) for i in t.items],
        asked=t.asked,
        tools=t.tools,
        fallback=t.fallback,
        decided_by=t.decided_by,
        state=t.state,
    )


def api_key(config: ServeConfig) -> str | None:
    return config.api_key or os.environ.get(config.api_key_env) or None


def create_app(service: Service) -> FastAPI:
    """The app around a ready :class:`Service` (fitting happens before serving)."""
    config = service.config
    metrics = service.metrics
    chat = ChatAgent(service)
    key = api_key(config)
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(MemoryStorage())
    rate = parse(config.rate_limit) if config.rate_limit else None

    app = FastAPI(
        title="recfunnel",
        version=__version__,
        description="Retrieval → ranker → LLM reranker, with explanations and chat.",
    )
    app.state.service = service
    app.state.chat = chat

    def refuse(status: int, detail: str, **headers: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)

    @app.middleware("http")
    async def gate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        response = await _gate(request, call_next, path)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    async def _gate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]], path: str
    ) -> Response:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > config.max_body_bytes):
            return refuse(413, f"request body over {config.max_body_bytes} bytes")
        public = path == "/" or path.startswith(PUBLIC)
        given = request.headers.get("authorization", "")
        if key and not public and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return refuse(401, "missing or wrong API key (Authorization: Bearer <key>)",
                          **{"WWW-Authenticate": "Bearer"})  # fmt: skip
        if rate is not None and not public:
            client = given or (request.client.host if request.client else "unknown")
            if not limiter.hit(rate, "recfunnel", client):
                metrics.rate_limited.inc()
                reset, _ = limiter.get_window_stats(rate, "recfunnel", client)
                wait = max(1, int(reset - time.time()))
                return refuse(429, f"rate limit {config.rate_limit} exceeded",
                              **{"Retry-After": str(wait)})  # fmt: skip
        return await call_next(request)

    def handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return refuse(status, str(exc))

        return handle

    # most specific first: UnknownUser/UnknownItem are RecfunnelErrors too
    for exc_class, status in ((UnknownUser, 404), (UnknownItem, 404), (EmptyRequest, 422),
                              (RecfunnelError, 400)):  # fmt: skip
        app.add_exception_handler(exc_class, handler(status))

    @app.post("/recommend", response_model=RecommendOut, responses=ERRORS)
    def recommend(body: RecommendIn) -> RecommendOut:
        """Top items for a known user, an anonymous history, and/or free text."""
        req = service.resolve(body.user_id, body.history, body.text, body.goal)
        return recommend_out(service.recommend(req, body.k))

    @app.post("/chat", response_model=ChatOut, responses=ERRORS)
    def chat_turn(body: ChatIn) -> ChatOut:
        """One turn of a conversation; send back the returned ``session_id`` to go on."""
        return chat_out(chat.turn(body.message, body.session_id))

    @app.get("/items/search", response_model=list[SearchHit], responses=ERRORS)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=100)],
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> list[SearchHit]:
        """Catalog titles containing every word of ``q`` (most rated first)."""
        return [SearchHit(**hit) for hit in service.search(q, limit)]

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        data = service.data
        return Health(
            status="ok",
            dataset=data.name,
            items=data.catalog.n_items,
            users=data.interactions.n_users,
            pipeline=config.pipeline.name,
            breaker=str(service.breaker.current_state),
            version=__version__,
        )

    @app.get("/metrics", responses=ERRORS, response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    static = files("recfunnel.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app
