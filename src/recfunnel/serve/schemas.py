"""What the API reads and writes: request bodies (validated by field, JSON's own number
rules, Unicode text only) and answers, and the conversions from the service's types."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from recfunnel.serve.chat import Turn
from recfunnel.serve.config import MAX_HISTORY, MAX_K, MAX_TEXT
from recfunnel.serve.service import Answer, Item


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
    """Only ``status`` (and what is degraded) without a key; the rest for a caller with
    one."""

    status: str = Field(description="ok, or degraded (see degraded)")
    degraded: list[str] | None = Field(None, description="what does not work: storage")
    storage: str | None = None
    dataset: str | None = None
    items: int | None = None
    users: int | None = None
    pipeline: str | None = None
    breaker: str | None = None
    version: str | None = None


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
