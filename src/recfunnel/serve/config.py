"""What ``recfunnel serve`` runs: a dataset, a pipeline, and the service's limits.

Defaults are the embedded set-up (ml-latest-small; the learned cold-start ranker on the
path up to 200 history items, tuned at start-up on held-out users; ALS above, where the
routing study has no measurement), so ``recfunnel serve`` needs no file at all.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recfunnel.core.config import Strict
from recfunnel.pipeline.config import (
    PipelineConfig,
    RouteConfig,
    RoutedPipelineConfig,
    builtin_any,
    builtin_pipeline,
    learns_on_validation,
    pipelines_of,
)

MAX_HISTORY = 500
"""Items an anonymous request may list (a larger body is refused, not truncated)."""
MAX_TEXT = 500
"""Characters of free text, goal or chat message."""
MAX_K = 50
STORAGE_SCHEMES = ("memory://", "redis://", "rediss://")


def key_problem(key: str) -> str | None:
    """Why a configured key could never match a bearer header (a presented token is
    stripped and read as Latin-1), or None: it must be printable ASCII without spaces."""
    if not key.strip():
        return "an empty key would leave the server open: give one, or remove the setting"
    if key != key.strip():
        return "the key has surrounding spaces, so no request could match it: remove them"
    if not all("!" <= c <= "~" for c in key):
        return "a key is printable ASCII without spaces"
    return None


class BreakerConfig(Strict):
    """Stop calling a failing LLM back-end for ``reset_s`` after ``failures`` in a row."""

    failures: int = Field(3, ge=1)
    reset_s: float = Field(30.0, gt=0)


class ChatConfig(Strict):
    sessions: int = Field(
        1000,
        ge=1,
        description="live sessions in all; past it a new one evicts the idlest "
        "session of the client holding the most (503 only when every client holds one)",
    )
    sessions_per_client: int = Field(
        20, ge=1, description="live sessions per client; its own oldest goes for a new one"
    )
    ttl_s: float = Field(3600.0, gt=0, description="idle seconds before a session is dropped")
    ttl_first_s: float = Field(
        300.0, gt=0, description="idle seconds before a session that had only one turn is dropped"
    )
    k: int = Field(5, ge=1, le=MAX_K, description="items shown per recommendation turn")
    decide: Literal["llm", "rules"] = Field(
        "llm", description="who picks the next action among the allowed ones"
    )


def default_pipeline() -> RoutedPipelineConfig:
    """The learned cold-start ranker with its tuned exposure step (`ltr+exposure`) up to 200
    history items, or free text; ALS above. The routing study found `ltr` best in every
    history bucket it measured (0–200 items) and its router chose 200 on both seeds; longer
    histories were not measured. The exposure step is the cold-start table's row that meets
    every target (accuracy and unique items shown)."""
    route = RouteConfig(cold=builtin_pipeline("ltr+exposure"), warm=builtin_pipeline("cf"),
                        threshold=200)  # fmt: skip
    return RoutedPipelineConfig(name="routed", route=route)


def llm_pipeline() -> RoutedPipelineConfig:
    """The LLM on the cold path: hybrid retrieval → the SmolLM2 verbalizer on the top 20
    (the earlier default; `configs/serve-llm.toml`)."""
    route = RouteConfig(
        cold=builtin_pipeline("hybrid+llm-verbalizer"), warm=builtin_pipeline("cf"), threshold=20
    )
    return RoutedPipelineConfig(name="routed", route=route)


class ServeConfig(Strict):
    """``configs/serve.toml``; every field has the embedded default."""

    dataset: str = "ml-latest-small"
    data_dir: str | None = None
    seed: int = 0
    pipeline: PipelineConfig | RoutedPipelineConfig = Field(default_factory=default_pipeline)
    tune_users: int = Field(
        200, ge=0,
        description="a pipeline with a learned ranker: users held out as in the cold-start "
        "protocol (their first tune_history items stay in training) to stop and tune it on",
    )  # fmt: skip
    tune_history: int = Field(5, ge=1, description="history items each tuning user keeps")
    k: int = Field(10, ge=1, le=MAX_K, description="items per answer unless the request says")
    budget_ms: float = Field(2000.0, gt=0, description="per-request latency budget")
    explain_llm_top: int = Field(
        0,
        ge=0,
        le=MAX_K,
        description="LLM-written (grounded) reasons for this many top items on the LLM path, "
        "budget permitting; every other item gets a template reason",
    )
    api_key: str | None = Field(None, description="bearer token (else $api_key_env, if set)")
    api_keys: list[str] = Field(
        default_factory=list, description="more bearer tokens; each key has its own bucket"
    )
    api_key_env: str = Field(
        "RECFUNNEL_API_KEY", description="env var with one key, or several comma-separated"
    )
    metrics_key: str | None = Field(
        None, description="the scraper's token: /metrics and /healthz only, never rate-limited"
    )
    metrics_key_env: str = "RECFUNNEL_METRICS_KEY"
    rate_limit: str | None = Field(
        "120/minute", description="per client (API key, else address); None: no limit"
    )
    auth_fail_limit: str | None = Field(
        "10/minute", description="refused keys per address before all its tries get 429"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) whose X-Forwarded-For is believed",
    )
    ipv6_prefix: int = Field(
        64, ge=32, le=128, description="an IPv6 client's rate-limit bucket: its /ipv6_prefix"
    )
    storage: str = Field(
        "memory://",
        description="rate limits and chat sessions: memory:// (one process) or "
        "redis://host:port/db (shared by workers and replicas)",
    )
    max_body_bytes: int = Field(65536, ge=1024)
    body_timeout_s: float = Field(
        10.0, gt=0, description="seconds to receive a whole request body (else 408)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds for a new connection to send its request headers"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections and requests per process; past it, 503"
    )
    concurrency: int = Field(
        4, ge=1, description="requests running the pipeline at once; the rest wait in a queue"
    )
    queue: int = Field(256, ge=0, description="requests waiting for the pipeline; past it, 503")
    queue_timeout_s: float = Field(
        20.0, gt=0, description="seconds a request may wait in the queue (then 503)"
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    warmup: bool = Field(True, description="load the models and embedder before serving")

    @field_validator("pipeline", mode="before")
    @classmethod
    def _builtin(cls, v: Any) -> Any:
        return builtin_any(v).model_dump() if isinstance(v, str) else v

    @field_validator("api_key", "metrics_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and (problem := key_problem(v)) is not None:
            raise ValueError(problem)
        return v

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for i, key in enumerate(v):
            if (problem := key_problem(key)) is not None:
                raise ValueError(f"entry {i}: {problem}")
        return v

    @field_validator("rate_limit", "auth_fail_limit")
    @classmethod
    def _limit(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from limits import parse

        try:
            parse(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate such as '120/minute'") from None
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an address or a network (CIDR)") from None
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not v.startswith(STORAGE_SCHEMES):
            raise ValueError(f"{v!r}: use memory:// or redis://host:port[/db]")
        return v

    @model_validator(mode="after")
    def _servable(self) -> ServeConfig:
        if isinstance(self.pipeline, RoutedPipelineConfig):
            route = self.pipeline.route
            if route.threshold is None:
                raise ValueError("pipeline.route.threshold: serving needs a fixed threshold")
            self.pipeline.resolve({}, "pipeline.route")
        for p in pipelines_of(self.pipeline):
            for i, s in enumerate(p.stages):
                if getattr(s, "calibration", None) is not None:
                    raise ValueError(
                        f"pipeline {p.name!r}: stages.{i}: set blend instead of calibration"
                    )
                if learns_on_validation(s) and self.tune_users == 0:
                    raise ValueError(
                        f"pipeline {p.name!r}: stages.{i} ({s.kind}) learns on validation "
                        "users: set tune_users > 0, or serve a pipeline without it"
                    )
        return self
