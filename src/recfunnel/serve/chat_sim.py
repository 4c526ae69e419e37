"""``recfunnel eval-chat``: simulated users talk to the chat; we count what happens.

Each simulated user is a held-out user of the cold-start protocol: the service is fitted
on the split's training data only, and the user's truth set is its held-out relevant
items. The user opens vaguely, answers a question from what it truly likes (its truth
items' most common genres, the titles it kept as history, its truth's main decade),
accepts the first recommendation that is in its truth set, and otherwise says "something
else" and reveals one more preference, giving up after ``turns`` turns.

Measured per policy (the LLM choosing the action, or the fixed rules): acceptance rate,
turns to acceptance, questions asked, hallucination rate (shown items outside the
catalog or outside the funnel's candidates of that turn) and each session's diversity
(intra-list distance of the genres of everything it showed).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recfunnel.core import progress
from recfunnel.core.candidates import PAD
from recfunnel.core.metrics import evaluate
from recfunnel.core.types import Catalog, Dataset
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import make_split, ordered_events
from recfunnel.llm.base import LLM
from recfunnel.serve.chat import ChatAgent, Turn
from recfunnel.serve.config import ServeConfig
from recfunnel.serve.service import Service


@dataclass
class SimUser:
    """What a simulated user knows about itself (all from the catalog and its split)."""

    history: list[int]
    truth: set[int]
    genres: list[str]
    decade: int | None
    told: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, catalog: Catalog, history: np.ndarray, truth: np.ndarray) -> SimUser:
        counts = Counter(g for i in truth for g in catalog.genre_sets[int(i)])
        ranked = sorted(counts.items(), key=lambda gc: (-gc[1], gc[0]))  # ties: by name
        genres = [g for g, _ in ranked if g != "(no genres listed)"][:3]
        years = catalog.years[np.asarray(truth, dtype=np.int64)]
        years = years[np.isfinite(years)]
        decade = int(np.median(years) // 10 * 10) if len(years) else None
        return cls([int(i) for i in history], {int(i) for i in truth}, genres, decade)

    def opener(self) -> str:
        return "Hi! Can you recommend a movie for tonight?"

    def answer(self, slot: str | None, catalog: Catalog) -> str:
        """Answer a question about ``slot``; each fact is told once."""
        if slot == "era" and self.decade is not None and "era" not in self.told:
            self.told.append("era")
            return f"Something from the {self.decade}s."
        return self.reveal(catalog, prefer=slot)

    def reveal(self, catalog: Catalog, prefer: str | None = None) -> str:
        """One more true preference: a genre or a liked title (alternating, or as asked)."""
        genres = [g for g in self.genres if f"genre:{g}" not in self.told]
        titles = [i for i in self.history[::-1] if f"title:{i}" not in self.told]
        want_title = prefer == "title" or (prefer != "genre" and len(self.told) % 2 == 1)
        if titles and (want_title or not genres):
            self.told.append(f"title:{titles[0]}")
            return f'I liked "{catalog.titles[titles[0]]}".'
        if genres:
            self.told.append(f"genre:{genres[0]}")
            return f"I like {genres[0].lower()} movies."
        return "Anything is fine."

    def judge(self, turn: Turn) -> int | None:
        """The first shown item in the truth set (accepted), else None."""
        return next((it.index for it in turn.items if it.index in self.truth), None)


@dataclass
class Session:
    accepted: bool
    turns: int
    questions: int
    shown: list[int]
    hallucinated: int
    fallbacks: int
    decided_by_llm: int
    actions: list[str]


def run_session(agent: ChatAgent, user: SimUser, max_turns: int) -> Session:
    n_items = agent.service.data.catalog.n_items
    catalog = agent.service.data.catalog
    message = user.opener()
    sid: str | None = None
    shown: list[int] = []
    bad = fallbacks = by_llm = questions = 0
    actions: list[str] = []
    for t in range(1, max_turns + 1):
        turn = agent.turn(message, sid)
        sid = turn.session_id
        actions.append(turn.action)
        by_llm += turn.decided_by == "llm"
        fallbacks += turn.fallback
        for it in turn.items:
            shown.append(it.index)
            bad += not (0 <= it.index < n_items) or it.index not in turn.candidates
        if turn.action == "ask":
            questions += 1
            message = user.answer(turn.asked, catalog)
            continue
        hit = user.judge(turn)
        if hit is not None:
            agent.reset(sid)
            return Session(True, t, questions, shown, bad, fallbacks, by_llm, actions)
        message = "No, something else. " + user.reveal(catalog)
    if sid is not None:
        agent.reset(sid)
    return Session(False, max_turns, questions, shown, bad, fallbacks, by_llm, actions)


def summarise(sessions: Sequence[Session], catalog: Catalog) -> dict[str, Any]:
    n = len(sessions)
    accepted = [s for s in sessions if s.accepted]
    shown = sum(len(s.shown) for s in sessions)
    depth = max((len(s.shown) for s in sessions), default=0)
    ild = float("nan")
    if depth > 1:
        ranked = np.full((n, depth), PAD, dtype=np.int64)
        for r, s in enumerate(sessions):
            ranked[r, : len(s.shown)] = s.shown
        dummy = [np.array([0])] * n  # ILD reads no truth; evaluate() wants a non-empty set
        res = evaluate(ranked, dummy, [f"ild@{depth}"], catalog.n_items,
                       item_genres=catalog.genre_matrix)  # fmt: skip
        has = np.array([len(s.shown) > 1 for s in sessions])
        ild = float(res.per_user[f"ild@{depth}"][has].mean()) if has.any() else float("nan")
    actions = Counter(a for s in sessions for a in s.actions)
    turns = sum(len(s.actions) for s in sessions)
    return {
        "sessions": n,
        "acceptance_rate": len(accepted) / max(n, 1),
        "turns_to_accept": float(np.mean([s.turns for s in accepted])) if accepted else None,
        "turns_per_session": turns / max(n, 1),
        "questions_per_session": float(np.mean([s.questions for s in sessions])) if n else 0.0,
        "items_shown_per_session": shown / max(n, 1),
        "hallucination_rate": sum(s.hallucinated for s in sessions) / max(shown, 1),
        "ild_per_session": ild,
        "fallback_rate": sum(s.fallbacks for s in sessions) / max(turns, 1),
        "llm_decided_rate": sum(s.decided_by_llm for s in sessions) / max(turns, 1),
        "actions": dict(sorted(actions.items())),
    }


NO_BUDGET_MS = 3_600_000.0
"""The simulation's latency budget: an hour, i.e. none — it waits for every answer."""


def eval_chat(
    config: ServeConfig,
    *,
    users: int = 50,
    turns: int = 6,
    seeds: Sequence[int] = (0,),
    policies: Sequence[Literal["llm", "rules"]] = ("llm", "rules"),
    truth_items: int | None = 10,
    dataset: Dataset | None = None,
    llm: LLM | None = None,
    on_session: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every policy on the same simulated users (cold-start test users of each seed).

    ``truth_items``: a user accepts only its next N relevant items in time order (its
    whole held-out set, often 100+ popular films, makes almost any list a hit). The
    service waits for every LLM answer (no latency budget): the table measures the
    policies, and a budget would make it depend on the machine's speed and on which
    answers happen to be cached."""
    data = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
    out: dict[str, Any] = {"users": users, "turns": turns, "seeds": list(seeds),
                           "truth_items": truth_items, "budget_ms": None,
                           "policies": {}}  # fmt: skip
    per: dict[str, list[Session]] = {p: [] for p in policies}
    t0 = time.perf_counter()
    for seed in seeds:
        split = make_split(data, "cold-start", seed, n_users=users)
        events = ordered_events(data.interactions, seed, data.timestamps_real)
        seq = {int(u): g.to_numpy() for u, g in events.groupby("user")["item"]}  # type: ignore[arg-type]
        train = dataclasses.replace(data, interactions=split.train)
        cfg = config.model_copy(update={"seed": seed, "warmup": False, "budget_ms": NO_BUDGET_MS})
        service = Service(cfg, dataset=train, llm=llm)
        for policy in policies:
            agent = ChatAgent(service, decide=policy)
            for req, truth in zip(split.test.requests, split.test.truth, strict=True):
                assert req.user is not None
                user = SimUser.of(data.catalog, req.history,
                                  next_relevant(seq[req.user], truth, truth_items))  # fmt: skip
                per[policy].append(run_session(agent, user, turns))
                if on_session:
                    on_session()
        service.close()
    for name, sessions in per.items():
        out["policies"][name] = summarise(sessions, data.catalog)
    out["seconds"] = time.perf_counter() - t0
    return out


def next_relevant(sequence: np.ndarray, truth: np.ndarray, n: int | None) -> np.ndarray:
    """The first ``n`` items of ``truth`` in the order the user met them (all if None)."""
    keep = set(int(i) for i in truth)
    ordered = list(dict.fromkeys(int(i) for i in sequence if int(i) in keep))
    return np.asarray(ordered if n is None else ordered[:n], dtype=np.int64)


def session_bar(total: int) -> Any:
    return progress.bar(total, "chat sessions", unit="session")
