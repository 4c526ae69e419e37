"""Conversational recommendation (Chat-REC style) with the funnel's stages as tools: the
agent (sessions, the action policy, the tools). Reading a message is
:mod:`~recfunnel.serve.chat_words`; the state and its updates,
:mod:`~recfunnel.serve.chat_state`.

Each turn, the user's message updates a preference state that is read off the catalog,
never invented: titles the catalog knows (liked, or disliked when the clause negates),
genres (and a few everyday words for them), release years ("90s", "after 2000"), and
the rest as free text for the content retriever. A later statement replaces one it
contradicts ("no horror" drops an earlier "I like horror"). Then a policy picks one
action among those the state allows:

- ``ask``: a clarifying question about the first thing the state lacks (genre, a liked
  title, an era);
- ``filter``: narrow the last retrieval's candidate pool (kept in the session) by genre
  and year, with no new retrieval;
- ``retrieve``: a new pool from retrieval + ranker for the updated state;
- ``recommend``: the pool reranked by the LLM (within the service's latency budget).

With ``decide = "llm"`` the LLM picks the action by the log-probability of its letter
(one forward pass; a 135M model cannot be trusted to write a tool call); ``"rules"`` is
the fixed policy the LLM is compared with. Every item shown comes from the service's
answer, whose items are the funnel's candidates: a message cannot make the chat show
anything else, whatever it says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from recfunnel.core.types import Request
from recfunnel.llm.base import Message
from recfunnel.serve.chat_state import KEEP, SLOTS, ChatState, Update, apply
from recfunnel.serve.chat_words import PreferenceParser
from recfunnel.serve.service import Answer, Item, Service
from recfunnel.serve.sessions import SessionStore, UnknownSession, sessions_from
from recfunnel.serve.storage import StorageGuard

__all__ = ["KEEP", "SLOTS", "ChatAgent", "ChatState", "PreferenceParser", "Turn", "Update",
           "apply"]  # fmt: skip

PROMPT_VERSION = "chat-action/1"
"""Part of every cached decision's key: bump it when :meth:`ChatAgent.prompt` changes."""

Action = Literal["ask", "filter", "retrieve", "recommend"]
ACTIONS: tuple[Action, ...] = ("ask", "filter", "retrieve", "recommend")
ACTION_HELP = {
    "ask": "ask the user a clarifying question",
    "filter": "narrow the current list by genre or year",
    "retrieve": "search the catalog again for the updated preferences",
    "recommend": "show the best candidates, reranked",
}
QUESTIONS = {
    "genre": "What kind of {noun}s are you in the mood for — a genre, or a feeling?",
    "title": "Which {noun} did you enjoy recently?",
    "era": "Any era you prefer — recent ones, or older classics?",
}
LOCAL = "local"
"""The client of in-process chats (the simulator, tests): the app passes the caller's."""


@dataclass
class Turn:
    """One answer of the chat."""

    session_id: str
    turn: int
    action: str
    """One of :data:`ACTIONS`, or ``done`` when the user took an item."""
    reply: str
    items: list[Item]
    asked: str | None = None
    tools: list[str] = field(default_factory=list)
    fallback: bool = False
    decided_by: str = "rules"
    candidates: set[int] = field(default_factory=set, repr=False)
    state: dict[str, Any] = field(default_factory=dict)


class ChatAgent:
    """Runs turns against a :class:`Service`; sessions live in a
    :class:`~recfunnel.serve.sessions.SessionStore` (the service's storage by default)."""

    def __init__(self, service: Service, decide: Literal["llm", "rules"] | None = None,
                 k: int | None = None, sessions: SessionStore | None = None,
                 guard: StorageGuard | None = None) -> None:  # fmt: skip
        cfg = service.config.chat
        self.service = service
        self.decide = decide or cfg.decide
        self.k = k or cfg.k
        self.parser = PreferenceParser(service)
        self.sessions = (
            sessions if sessions is not None else sessions_from(service.config.storage, cfg, guard)
        )

    # ---- sessions ------------------------------------------------------------------
    def state(self, session_id: str | None, client: str = LOCAL) -> tuple[str, ChatState]:
        """A new session of ``client`` (no id), else its own session ``session_id``;
        raises UnknownSession for an id that is not a live session of this client."""
        if session_id is None:
            return self.sessions.create(client), ChatState()
        saved = self.sessions.load(session_id, client)
        if saved is None:
            raise UnknownSession(
                "session_id: no such chat session for this client (it expired, or it was "
                "not started by this client); send no session_id to start a new chat"
            )
        return session_id, ChatState.of(saved)

    def reset(self, session_id: str, client: str = LOCAL) -> bool:
        return self.sessions.delete(session_id, client)

    # ---- one turn ------------------------------------------------------------------
    def turn(self, message: str, session_id: str | None = None, client: str = LOCAL) -> Turn:
        """One turn of ``client``'s session (a new one without an id); the state is
        saved after the turn."""
        sid, st = self.state(session_id, client)
        out = self._step(sid, st, message)
        self.sessions.save(sid, client, asdict(st))
        return out

    def _step(self, sid: str, st: ChatState, message: str) -> Turn:
        st.turn += 1
        titles = self.service.data.catalog.frame["title"]
        up = self.parser.parse(message, st)
        apply(st, up, lambda i: str(titles.iloc[i]))
        if up.accept and st.last_shown:  # the named item, else the first one shown
            st.accepted = up.taken[0] if up.taken else st.last_shown[0]
            title = str(titles.iloc[st.accepted])
            return self._turn(sid, st, "done", f"Enjoy {title}!", [], decided_by="user")
        allowed = self.allowed(st, up)
        action, by = self.choose(st, message, allowed)
        if action == "ask":
            slot = st.missing() or "genre"
            st.asked.append(slot)
            question = QUESTIONS[slot].format(noun=self.service.data.catalog.noun)
            return self._turn(sid, st, "ask", question, [], asked=slot, decided_by=by)
        answer, tools = self._act(st, action)
        if action != "filter":
            st.pool = [[i, s] for i, s in answer.pool]
        items = [it for it in answer.items if it.index in answer.candidates]
        st.shown.extend(it.index for it in items)
        st.last_shown = [it.index for it in items]
        if items:
            reply = "You might like: " + "; ".join(it.title for it in items) + "."
        else:
            reply = "Nothing in the catalog fits all of that — could you relax a constraint?"
        return self._turn(sid, st, action, reply, items, tools=tools, fallback=answer.fallback,
                          decided_by=by, candidates=answer.candidates)  # fmt: skip

    def allowed(self, st: ChatState, up: Update) -> list[Action]:
        """What the state permits: nothing known → only ask; a pool to narrow → filter."""
        if not st.knows_anything():
            return ["ask"]
        out: list[Action] = []
        if st.missing() is not None and not up.more:
            out.append("ask")
        if st.pool and up.narrows and not up.broadens:
            out.append("filter")
        out += ["retrieve", "recommend"]
        return out

    def choose(self, st: ChatState, message: str, allowed: Sequence[Action]) -> tuple[Action, str]:
        if len(allowed) == 1:
            return allowed[0], "forced"
        if self.decide == "rules" or self.service.llm is None:
            return self.rule(st, allowed), "rules"
        letters = [chr(ord("A") + j) for j in range(len(allowed))]
        prompt = self.prompt(st, message, allowed, letters)
        llm = self.service.llm
        budget = self.service.config.budget_ms / 1000
        lp = self.service.call_llm(
            lambda: llm.option_logprobs(prompt, letters, PROMPT_VERSION), budget / 2
        )
        if lp is None:  # busy or down: the fixed policy answers instead
            return self.rule(st, allowed), "rules-fallback"
        return allowed[int(np.argmax(lp.logprobs))], "llm"

    @staticmethod
    def rule(st: ChatState, allowed: Sequence[Action]) -> Action:
        """Ask until genre and a title are known (two questions at most), narrow when
        only constraints changed, else rerank."""
        if "ask" in allowed and len(st.asked) < 2:
            return "ask"
        return "filter" if "filter" in allowed else "recommend"

    def prompt(self, st: ChatState, message: str, allowed: Sequence[Action],
               letters: Sequence[str]) -> list[Message]:  # fmt: skip
        noun = self.service.data.catalog.noun
        titles = self.service.data.catalog.frame["title"]
        known = [f"liked: {', '.join(str(titles.iloc[i]) for i in st.liked) or 'none yet'}",
                 f"genres wanted: {', '.join(st.genres) or 'unknown'}",
                 f"genres to avoid: {', '.join(st.avoid_genres) or 'none'}",
                 f"years: {st.year_min or 'any'}–{st.year_max or 'any'}",
                 f"{noun}s shown so far: {len(st.shown)}"]  # fmt: skip
        pairs = zip(letters, allowed, strict=True)
        options = "\n".join(f"{c}. {a}: {ACTION_HELP[a]}" for c, a in pairs)
        user = (f"You help a user find a {noun}. What you know:\n- " + "\n- ".join(known) +
                f"\n\nThe user just said: \"{message[:300]}\"\n\nWhat should you do next?\n"
                f"{options}\nAnswer with the letter only.")  # fmt: skip
        system = f"You are a {noun} recommendation assistant. You answer with a single letter."
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    # ---- tools ---------------------------------------------------------------------
    def request(self, st: ChatState) -> Request:
        text = " ".join([*st.notes[-3:], *(f"{g} {self.service.data.catalog.noun}"
                                           for g in st.genres)])  # fmt: skip
        return Request(None, np.asarray(st.liked, dtype=np.int64), text or None)

    def narrow(self, st: ChatState) -> Callable[[np.ndarray], np.ndarray]:
        """The filter tool over a ranked pool: avoided genres, the year range, disliked and
        shown items out; wanted genres first (each group keeps the pool's order)."""
        catalog = self.service.data.catalog
        genres, years = catalog.genre_sets, catalog.years
        avoid, want = set(st.avoid_genres), set(st.genres)
        drop = set(st.disliked) | set(st.shown) | set(st.liked)
        lo = -np.inf if st.year_min is None else st.year_min
        hi = np.inf if st.year_max is None else st.year_max
        dated = st.year_min is not None or st.year_max is not None

        def run(items: np.ndarray) -> np.ndarray:
            items = items[items >= 0]
            gs = [genres[int(i)] for i in items]
            y = years[items]
            ok = np.array([int(i) not in drop and not g & avoid for i, g in zip(items, gs,
                                                                               strict=True)],
                          dtype=bool)  # fmt: skip
            if dated:
                ok &= (y >= lo) & (y <= hi)  # an undated item fails a year filter
            first = np.array([bool(g & want) for g in gs], dtype=bool)
            order = np.concatenate([np.flatnonzero(ok & first), np.flatnonzero(ok & ~first)])
            return items[order]

        return run

    def _act(self, st: ChatState, action: Action) -> tuple[Answer, list[str]]:
        req, narrow = self.request(st), self.narrow(st)
        if action == "filter":
            return self.filtered(st, req, narrow), ["filter"]
        if action == "recommend":
            return self.service.recommend(req, self.k, narrow=narrow), ["retrieve", "filter",
                                                                        "rerank"]  # fmt: skip
        ans = self.service.recommend(req, self.k, narrow=narrow, use_llm=False)
        return ans, ["retrieve", "filter"]

    def filtered(self, st: ChatState, req: Request,
                 narrow: Callable[[np.ndarray], np.ndarray]) -> Answer:  # fmt: skip
        """The filter tool: the session's pool from its last retrieval, narrowed, with no
        new retrieval; its candidates are that pool's items."""
        t0 = time.perf_counter()
        score = {int(i): float(s) for i, s in st.pool}
        kept = [int(i) for i in narrow(np.asarray(list(score), dtype=np.int64))][: self.k]
        items = self.service.items(req, [(i, score[i]) for i in kept], set(score))
        ms = 1000 * (time.perf_counter() - t0)
        return Answer(items, "filter", False, None, {"filter": ms, "total": ms}, set(score))

    def _turn(self, sid: str, st: ChatState, action: str, reply: str, items: list[Item],
              **kw: Any) -> Turn:  # fmt: skip
        self.service.metrics.chat_actions.labels(action).inc()
        st.trim()
        titles = self.service.data.catalog.frame["title"]
        state = {
            "liked": [str(titles.iloc[i]) for i in st.liked],
            "disliked": [str(titles.iloc[i]) for i in st.disliked],
            **{k: v for k, v in asdict(st).items()
               if k in ("genres", "avoid_genres", "year_min", "year_max", "notes", "dropped")},
            "shown": len(st.shown),
        }  # fmt: skip
        return Turn(sid, st.turn, action, reply, items, state=state, **kw)
