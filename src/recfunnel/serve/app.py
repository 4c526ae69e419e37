"""The HTTP API (FastAPI): ``/recommend``, ``/chat``, ``/items/search``, ``/healthz``,
``/metrics`` and the demo page at ``/``.

Access (:mod:`~recfunnel.serve.middleware`): with API keys configured, every endpoint
but ``/healthz`` and the page's files needs ``Authorization: Bearer <key>``; each client
(its key, else its address) has a moving-window rate limit. ``/healthz`` says only "ok"
to a caller without a key. Bad input is a 4xx whose ``detail`` names the field and quotes
at most a short, escaped excerpt of what was sent; bodies over ``max_body_bytes`` are
refused before they are read whole. Chat sessions belong to the client that started them.

``recfunnel serve --workers N`` starts each worker with :func:`app_from_env`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from recfunnel.core import __version__
from recfunnel.core.errors import RecfunnelError, UnknownItem, UnknownUser
from recfunnel.serve.chat import ChatAgent, Turn
from recfunnel.serve.config import MAX_HISTORY, MAX_K, MAX_TEXT, ServeConfig
from recfunnel.serve.middleware import BodyLimit, Counted, Gate, refusal
from recfunnel.serve.service import Answer, EmptyRequest, Item, Service
from recfunnel.serve.sessions import ChatFull, UnknownSession

log = logging.getLogger(__name__)

CONFIG_ENV = "RECFUNNEL_SERVE_CONFIG"
"""The serve config as JSON, for workers that build their own app (:func:`app_from_env`)."""
EXCERPT = 40
"""Characters of a refused value an error quotes (escaped)."""


def unicode_text(v: str) -> str:
    """JSON can escape a lone surrogate ("\\ud800"), which no UTF-8 text holds: refused
    here, by field, rather than failing later in a tokenizer or the response encoder."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {exc.start}") from None
    return v


Unicode = AfterValidator(unicode_text)  # after the length check: it reads the whole text
Text = Annotated[str, Field(max_length=MAX_TEXT), Unicode]
ChatText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), Unicode]
Title = Annotated[str, Field(min_length=1, max_length=200), Unicode]
UserName = Annotated[str, Field(min_length=1, max_length=64), Unicode]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


ItemRef = Annotated[int, Field(ge=0)] | Title


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
    user_id: int | UserName | None = Field(None, description="a known user; their history is used")
    history: list[ItemRef] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="items the user liked: catalog item ids (numbers) or titles (strings)",
    )
    text: Text | None = Field(None, description="what the user wants")
    goal: Text | None = Field(None, description="goal for goal rerankers")
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
    message: ChatText
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the id a first turn returned (only the server makes them); none: a new chat",
    )


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
    """Only ``status`` without a key; the rest for a caller with one."""

    status: str
    dataset: str | None = None
    items: int | None = None
    users: int | None = None
    pipeline: str | None = None
    breaker: str | None = None
    version: str | None = None


class ErrorOut(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in [
        (400, "a body that is not UTF-8 JSON"),
        (401, "missing or wrong API key"),
        (404, "unknown user, item id, title or chat session"),
        (413, "request body too large"),
        (422, "invalid request (the detail names the field)"),
        (429, "rate limit exceeded, or too many refused keys from this address"),
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
    """One entry per problem: the field (``loc``, also dotted as ``field``), what is
    wrong, and an excerpt of the value — never the body itself."""
    out = []
    for err in exc.errors():
        loc = [p if isinstance(p, int) else excerpt(str(p)) for p in err["loc"]]
        entry = {"loc": loc, "field": ".".join(str(p) for p in loc[1:]) or str(loc[0]),
                 "msg": str(err["msg"])[:300], "type": err["type"]}  # fmt: skip
        if (quoted := excerpt(err.get("input"))) is not None:
            entry["input"] = quoted
        out.append(entry)
    return out


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


def create_app(service: Service) -> FastAPI:
    """The app around a ready :class:`Service` (fitting happens before serving)."""
    config = service.config
    metrics = service.metrics
    chat = ChatAgent(service)

    app = FastAPI(
        title="recfunnel",
        version=__version__,
        description="Retrieval → ranker → LLM reranker, with explanations and chat.",
    )
    app.state.service = service
    app.state.chat = chat

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Gate, config=config, metrics=metrics)
    app.add_middleware(Counted, metrics=metrics)  # the last added is the outermost
    add_error_handlers(app)

    @app.post("/recommend", response_model=RecommendOut, responses=ERRORS)
    def recommend(body: RecommendIn) -> RecommendOut:
        """Top items for a known user, an anonymous history, and/or free text."""
        req = service.resolve(body.user_id, body.history, body.text, body.goal)
        return recommend_out(service.recommend(req, body.k))

    @app.post("/chat", response_model=ChatOut, responses=ERRORS)
    def chat_turn(body: ChatIn, request: Request) -> ChatOut:
        """One turn of a conversation; send back the returned ``session_id`` to go on
        (only the client that started a session can)."""
        return chat_out(chat.turn(body.message, body.session_id, request.state.client))

    @app.get("/items/search", response_model=list[SearchHit], responses=ERRORS)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=100)],
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> list[SearchHit]:
        """Catalog titles containing every word of ``q`` (most rated first)."""
        return [SearchHit(**hit) for hit in service.search(q, limit)]

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True)
    def healthz(request: Request) -> Health:
        """Says "ok" while serving; to a key, also what is served and the breaker."""
        if getattr(request.state, "role", None) is None:
            return Health(status="ok")
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


def add_error_handlers(app: FastAPI) -> None:
    """Errors with safe bodies: the library's own by kind (4xx; a full chat store 503),
    invalid input by field (FastAPI's default handler echoes the input, and can fail
    encoding it: a 500)."""

    def handler(status: int, **headers: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(_: Request, exc: Exception) -> Response:
            return refusal(status, str(exc), **headers)

        return handle

    for exc_class, status in ((UnknownUser, 404), (UnknownItem, 404), (UnknownSession, 404),
                              (EmptyRequest, 422), (RecfunnelError, 400)):  # fmt: skip
        app.add_exception_handler(exc_class, handler(status))
    app.add_exception_handler(ChatFull, handler(503, **{"Retry-After": "60"}))

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return refusal(422, field_errors(exc))

    app.add_exception_handler(RequestValidationError, invalid)


def app_from_env() -> FastAPI:
    """The app a worker of ``recfunnel serve --workers N`` builds: the config from
    ``$RECFUNNEL_SERVE_CONFIG`` (JSON), its own fitted service."""
    config = ServeConfig.model_validate_json(os.environ[CONFIG_ENV])
    return create_app(Service(config))
