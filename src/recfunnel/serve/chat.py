"""Conversational recommendation (Chat-REC style) with the funnel's stages as tools.

Each turn, the user's message updates a preference state that is read off the catalog,
never invented: titles the catalog knows (liked, or disliked when the clause negates),
genres (and a few everyday words for them), release years ("90s", "after 2000"), and
the rest as free text for the content retriever. A later statement replaces one it
contradicts ("no horror" drops an earlier "I like horror"). Then a policy picks one
action among those the state allows:

- ``ask``: a clarifying question about the first thing the state lacks (genre, a liked
  title, an era);
- ``filter``: narrow the current candidate pool by genre and year (no new retrieval);
- ``retrieve``: a new pool from retrieval + ranker for the updated state;
- ``recommend``: the pool reranked by the LLM (within the service's latency budget).

With ``decide = "llm"`` the LLM picks the action by the log-probability of its letter
(one forward pass; a 135M model cannot be trusted to write a tool call); ``"rules"`` is
the fixed policy the LLM is compared with. Every item shown comes from the service's
answer, whose items are the funnel's candidates: a message cannot make the chat show
anything else, whatever it says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from recfunnel.core.types import Request
from recfunnel.llm.base import Message
from recfunnel.serve.service import Answer, Item, Service
from recfunnel.serve.sessions import SessionStore, UnknownSession, sessions_from
from recfunnel.stages.explain.grounded import normalize

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
SLOTS = ("genre", "title", "era")
QUESTIONS = {
    "genre": "What kind of {noun}s are you in the mood for — a genre, or a feeling?",
    "title": "Which {noun} did you enjoy recently?",
    "era": "Any era you prefer — recent ones, or older classics?",
}

WORDS_FOR = {  # everyday words → catalog genre (MovieLens' names)
    "funny": "Comedy", "comedies": "Comedy", "scary": "Horror", "horror": "Horror",
    "romantic": "Romance", "love story": "Romance", "animated": "Animation",
    "cartoon": "Animation", "kids": "Children", "family": "Children",
    "science fiction": "Sci-Fi", "scifi": "Sci-Fi", "sci fi": "Sci-Fi", "space": "Sci-Fi",
    "suspense": "Thriller", "thrillers": "Thriller", "noir": "Film-Noir",
    "documentaries": "Documentary", "westerns": "Western", "musicals": "Musical",
    "depressing": "Drama", "sad": "Drama", "tearjerker": "Drama", "dramas": "Drama",
    "fantasy": "Fantasy", "mysteries": "Mystery",
}  # fmt: skip
NEGATION = re.compile(
    r"\b(not|no|never|hate|hated|dislike|disliked|avoid|without|less|nothing|none|"
    r"don'?t|didn'?t|doesn'?t|isn'?t|wasn'?t|won'?t|stop|enough)\b"
)
ACCEPT = re.compile(r"\b(yes|yeah|sounds good|perfect|great|i'?ll (watch|take)|love it)\b")
COMMON = frozenset((
    "perfect", "love", "help", "home", "night", "great", "please", "maybe", "sure", "okay",
    "thanks", "hello", "something", "anything", "nothing", "more", "other", "what", "that",
    "this", "they", "them", "then", "there", "here", "some", "like",
))  # fmt: skip
"""Capitalised words that are also one-word titles but, in a chat message, mostly are not."""
MORE = re.compile(r"\b(something else|more|other|another|different|seen (it|them|those))\b")
KEEP = {"liked": 20, "disliked": 20, "genres": 20, "avoid_genres": 20, "notes": 5,
        "shown": 200, "last_shown": 50, "asked": 6, "dropped": 10}  # fmt: skip
"""The most recent entries each list of a session keeps: the state, and what a turn
returns of it, stay the same size however long a chat goes (``shown`` keeps repeats out
of the last 200 items)."""
LOCAL = "local"
"""The client of in-process chats (the simulator, tests): the app passes the caller's."""


GENERIC = frozenset((
    "a", "an", "the", "i", "i'd", "i'm", "me", "my", "you", "can", "could", "would", "want",
    "like", "need", "looking", "for", "some", "something", "anything", "good", "movie",
    "movies", "film", "films", "show", "recommend", "recommendation", "suggest", "watch",
    "tonight", "today", "to", "please", "hi", "hello", "hey", "thanks", "what", "should",
    "is", "are", "it", "one", "ones", "and", "or", "of", "with", "in", "on", "now", "maybe",
))  # fmt: skip
"""Words that say nothing about taste: a message made only of them is not a preference."""


def informative(clause: str) -> bool:
    words = re.findall(r"[a-z']+", clause.lower())
    return (
        len(words) >= 2
        and not ACCEPT.search(clause.lower())
        and any(w not in GENERIC for w in words)
    )


@dataclass
class ChatState:
    """What the conversation has established; every entry points into the catalog."""

    liked: list[int] = field(default_factory=list)
    disliked: list[int] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    avoid_genres: list[str] = field(default_factory=list)
    year_min: int | None = None
    year_max: int | None = None
    notes: list[str] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    last_shown: list[int] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    accepted: int | None = None
    turn: int = 0
    dropped: list[str] = field(default_factory=list)
    """Preferences a later message contradicted (kept for the trace, not used)."""

    @classmethod
    def of(cls, saved: dict[str, Any]) -> ChatState:
        """A state from its saved (JSON) form."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def trim(self) -> None:
        """Keep the most recent :data:`KEEP` entries of each list."""
        for name, keep in KEEP.items():
            del getattr(self, name)[:-keep]

    def knows_anything(self) -> bool:
        return bool(self.liked or self.genres or self.notes)

    def missing(self) -> str | None:
        """The first slot neither told nor asked about."""
        told = {"genre": bool(self.genres or self.notes), "title": bool(self.liked),
                "era": self.year_min is not None or self.year_max is not None}  # fmt: skip
        return next((s for s in SLOTS if not told[s] and s not in self.asked), None)


@dataclass
class Update:
    """What one message changed: lets the policy tell a narrowing from a new topic."""

    liked: list[int] = field(default_factory=list)
    disliked: list[int] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    avoid_genres: list[str] = field(default_factory=list)
    years: bool = False
    note: str | None = None
    accept: bool = False
    taken: list[int] = field(default_factory=list)
    """Items of the last answer the message named (positively): the one accepted."""
    more: bool = False

    @property
    def broadens(self) -> bool:
        """New things to search for (not only constraints on what is there)."""
        return bool(self.liked or self.genres or self.note)

    @property
    def narrows(self) -> bool:
        return bool(self.avoid_genres or self.years or self.disliked)


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


class PreferenceParser:
    """Reads titles, genres, years and acceptance off a message, clause by clause."""

    def __init__(self, service: Service) -> None:
        self.service = service
        frame = service.data.catalog.frame
        names = sorted({g for gs in frame["genres"] for g in gs})
        self.genre_words = {normalize(g): g for g in names if g != "(no genres listed)"}
        self.genre_words.update({normalize(w): g for w, g in WORDS_FOR.items() if g in names})
        self.max_year = int(np.nanmax(service.data.catalog.years))

    def parse(self, message: str, state: ChatState) -> Update:
        up = Update()
        low = re.sub(r"[\"“][^\"”]*[\"”]", " ", message.lower())  # a quoted title is not "perfect"
        up.accept = bool(ACCEPT.search(low)) and not NEGATION.search(low)
        up.more = bool(MORE.search(low))
        rest = []
        for clause in re.split(r"[.;!?]|,\s*|\bbut\b", message):
            if not clause.strip():
                continue
            neg = bool(NEGATION.search(clause.lower()))
            named = self._titles(clause)
            if neg:
                up.disliked += named
            elif up.accept:  # "yes, I'll watch X": X taken if just shown, else liked
                up.taken += [i for i in named if i in state.last_shown]
                up.liked += [i for i in named if i not in state.last_shown]
            else:  # "I liked X" about a film just shown: seen it, a preference
                up.liked += named
            words = f" {normalize(clause)} "
            for w, g in self.genre_words.items():
                if f" {w} " in words or f" {w}s " in words:
                    (up.avoid_genres if neg else up.genres).append(g)
            up.years |= self._years(clause.lower(), state)
            if not named and not neg and not MORE.search(clause.lower()):
                rest.append(clause.strip())
        note = " ".join(r for r in rest if informative(r))
        up.note = note or None
        return up

    def _titles(self, text: str) -> list[int]:
        named, _ = self.service.titles.mentions(text, COMMON)
        return [self.service.most_rated(ids) for ids in named.values()]

    def _years(self, text: str, state: ChatState) -> bool:
        m = re.search(r"\b(?:(19|20)?(\d)0)'?s\b", text)
        if m:
            century = m.group(1) or ("20" if m.group(2) in "012" else "19")
            start = int(f"{century}{m.group(2)}0")
            state.year_min, state.year_max = start, start + 9
            return True
        changed = False
        if m := re.search(r"\b(after|since|newer than)\s+((?:19|20)\d\d)\b", text):
            state.year_min = int(m.group(2)) + (m.group(1) != "since")
            changed = True
        if m := re.search(r"\b(before|older than)\s+((?:19|20)\d\d)\b", text):
            state.year_max = int(m.group(2)) - 1
            changed = True
        if re.search(r"\b(recent|new|newer|latest)\b", text) and not changed:
            state.year_min, state.year_max = self.max_year - 10, None
            changed = True
        if re.search(r"\b(old|older|classic|classics)\b", text) and not changed:
            state.year_min, state.year_max = None, 1979
            changed = True
        return changed


def apply(state: ChatState, up: Update, catalog_title: Callable[[int], str]) -> None:
    """Lay an update over the state; whatever it contradicts is dropped (and recorded)."""

    def take(
        new: Sequence[Any], into: list[Any], against: list[Any], was: Callable[[Any], str]
    ) -> None:
        for x in new:
            if x in against:
                against.remove(x)
                state.dropped.append(was(x))
            if x not in into:
                into.append(x)

    take(up.liked, state.liked, state.disliked, lambda i: f"disliked {catalog_title(i)}")
    take(up.disliked, state.disliked, state.liked, lambda i: f"liked {catalog_title(i)}")
    take(up.genres, state.genres, state.avoid_genres, lambda g: f"no {g}")
    take(up.avoid_genres, state.avoid_genres, state.genres, lambda g: f"likes {g}")
    if up.note:
        state.notes.append(up.note)


class ChatAgent:
    """Runs turns against a :class:`Service`; sessions live in a
    :class:`~recfunnel.serve.sessions.SessionStore` (the service's storage by default)."""

    def __init__(self, service: Service, decide: Literal["llm", "rules"] | None = None,
                 k: int | None = None, sessions: SessionStore | None = None) -> None:  # fmt: skip
        cfg = service.config.chat
        self.service = service
        self.decide = decide or cfg.decide
        self.k = k or cfg.k
        self.parser = PreferenceParser(service)
        self.sessions = (
            sessions if sessions is not None else sessions_from(service.config.storage, cfg)
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
        if st.shown and up.narrows and not up.broadens:
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
        if action == "recommend":
            return self.service.recommend(req, self.k, narrow=narrow), ["retrieve", "filter",
                                                                        "rerank"]  # fmt: skip
        ans = self.service.recommend(req, self.k, narrow=narrow, use_llm=False)
        return ans, (["filter"] if action == "filter" else ["retrieve", "filter"])

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
