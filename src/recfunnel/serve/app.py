"""The HTTP API (FastAPI): ``/recommend``, ``/chat``, ``/items/search``, ``/healthz``,
``/metrics`` and the demo page at ``/``.

Access (:mod:`~recfunnel.serve.middleware`): with API keys configured, every endpoint
but ``/healthz`` and the page's files needs ``Authorization: Bearer <key>``; each client
(its key, else its address) has a moving-window rate limit. ``/healthz`` says only "ok"
(or "degraded" and what is) to a caller without a key; a wrong key there is refused and
counted like anywhere else. Bad input is a 4xx whose ``detail`` names the field and
quotes at most a short, escaped excerpt of what was sent (:mod:`~recfunnel.serve.errors`);
bodies over ``max_body_bytes`` are refused before they are read whole. Requests that run
the pipeline wait in a bounded queue (:mod:`~recfunnel.serve.admission`). Chat sessions
belong to the client that started them.

``recfunnel serve --workers N`` starts each worker with :func:`app_from_env`.
"""

from __future__ import annotations

import logging
import os
from importlib.resources import files
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from recfunnel.core import __version__
from recfunnel.serve.access import Keys
from recfunnel.serve.admission import Admission
from recfunnel.serve.chat import ChatAgent
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.errors import ERRORS, add_error_handlers
from recfunnel.serve.middleware import BodyLimit, Counted, Gate, Secured
from recfunnel.serve.schemas import (
    ChatIn,
    ChatOut,
    Health,
    RecommendIn,
    RecommendOut,
    SearchHit,
    chat_out,
    recommend_out,
)
from recfunnel.serve.service import Service
from recfunnel.serve.storage import StorageGuard

log = logging.getLogger(__name__)

CONFIG_ENV = "RECFUNNEL_SERVE_CONFIG"
"""The serve config as JSON, for workers that build their own app (:func:`app_from_env`)."""


def create_app(service: Service) -> FastAPI:
    """The app around a ready :class:`Service` (fitting happens before serving). Raises
    :class:`~recfunnel.core.errors.ConfigError` for a key setting that holds no key."""
    config = service.config
    metrics = service.metrics
    Keys.of(config)  # refuse an empty key setting now, not at the first request
    guard = StorageGuard(config.storage)
    chat = ChatAgent(service, guard=guard)
    admission = Admission(config, metrics)

    app = FastAPI(
        title="recfunnel",
        version=__version__,
        description="Retrieval → ranker → LLM reranker, with explanations and chat.",
    )
    app.state.service = service
    app.state.chat = chat
    app.state.guard = guard

    app.add_middleware(BodyLimit, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(Gate, config=config, metrics=metrics, guard=guard)
    app.add_middleware(Counted, metrics=metrics)
    app.add_middleware(Secured)  # the last added is the outermost
    add_error_handlers(app, metrics)

    @app.post("/recommend", response_model=RecommendOut, responses=ERRORS)
    async def recommend(body: RecommendIn) -> RecommendOut:
        """Top items for a known user, an anonymous history, and/or free text."""

        def run() -> RecommendOut:
            req = service.resolve(body.user_id, body.history, body.text, body.goal)
            return recommend_out(service.recommend(req, body.k))

        return await admission.run(run)

    @app.post("/chat", response_model=ChatOut, responses=ERRORS)
    async def chat_turn(body: ChatIn, request: Request) -> ChatOut:
        """One turn of a conversation; send back the returned ``session_id`` to go on
        (only the client that started a session can)."""
        client = request.state.client
        return await admission.run(
            lambda: chat_out(chat.turn(body.message, body.session_id, client))
        )

    @app.get("/items/search", response_model=list[SearchHit], responses=ERRORS)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=100)],
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> list[SearchHit]:
        """Catalog titles containing every word of ``q`` (most rated first)."""
        return [SearchHit(**hit) for hit in service.search(q, limit)]

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True,
             responses=ERRORS)  # fmt: skip
    def healthz(request: Request) -> Health:
        """ "ok", or "degraded" naming what does not work (the storage); to a key, also
        what is served, the storage and the breaker."""
        healthy = guard.healthy()
        status = "ok" if healthy else "degraded"
        degraded = None if healthy else ["storage"]
        if getattr(request.state, "role", None) is None:
            return Health(status=status, degraded=degraded)
        data = service.data
        return Health(
            status=status,
            degraded=degraded,
            storage=f"{guard.name} {guard.status()}",
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


def app_from_env() -> FastAPI:
    """The app a worker of ``recfunnel serve --workers N`` builds: the config from
    ``$RECFUNNEL_SERVE_CONFIG`` (JSON), its own fitted service."""
    config = ServeConfig.model_validate_json(os.environ[CONFIG_ENV])
    return create_app(Service(config))
