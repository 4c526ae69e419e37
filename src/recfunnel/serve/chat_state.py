"""What a chat has established, and how one message's update is laid over it: a later
statement replaces one it contradicts ("no horror" drops an earlier "I like horror"; a
new era replaces the old one), and what was dropped is recorded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

SLOTS = ("genre", "title", "era")
KEEP = {"liked": 20, "disliked": 20, "genres": 20, "avoid_genres": 20, "notes": 5,
        "shown": 200, "last_shown": 50, "asked": 6, "dropped": 10, "pool": 100}  # fmt: skip
"""The most recent entries each list of a session keeps: the state, and what a turn
returns of it, stay the same size however long a chat goes (``shown`` keeps repeats out
of the last 200 items)."""


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
    pool: list[list[float]] = field(default_factory=list)
    """The last retrieval's ranked list as [index, score] pairs: what a filter narrows."""
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
    years: dict[str, int | None] = field(default_factory=dict)
    """New bounds the message gave (``year_min`` and/or ``year_max``; None: no bound)."""
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
    if up.years:
        apply_years(state, up.years)
    if up.note:
        state.notes.append(up.note)


def span(lo: int | None, hi: int | None) -> str:
    return f"years {lo if lo is not None else '…'}–{hi if hi is not None else '…'}"


def apply_years(state: ChatState, new: dict[str, int | None]) -> None:
    """A new year bound replaces the old one; an old bound the new one contradicts (the
    range would be empty) is dropped; what changed is recorded."""
    old = (state.year_min, state.year_max)
    lo = new.get("year_min", state.year_min)
    hi = new.get("year_max", state.year_max)
    if lo is not None and hi is not None and lo > hi:
        if "year_max" not in new:
            hi = None
        elif "year_min" not in new:
            lo = None
    if old != (lo, hi) and old != (None, None):
        state.dropped.append(span(*old))
    state.year_min, state.year_max = lo, hi
