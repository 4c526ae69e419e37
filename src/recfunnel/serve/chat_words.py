"""Reading a chat message off the catalog: the tables of everyday words (genres,
negation, acceptance, "something else") and :class:`PreferenceParser`, which turns a
message into an :class:`~recfunnel.serve.chat_state.Update` and never writes the state."""

from __future__ import annotations

import re

import numpy as np

from recfunnel.core.titles import normalize
from recfunnel.serve.chat_state import ChatState, Update
from recfunnel.serve.service import Service

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
            up.years.update(self._years(clause.lower()))
            if not named and not neg and not MORE.search(clause.lower()):
                rest.append(clause.strip())
        note = " ".join(r for r in rest if informative(r))
        up.note = note or None
        return up

    def _titles(self, text: str) -> list[int]:
        named, _ = self.service.titles.mentions(text, COMMON)
        return [self.service.most_rated(ids) for ids in named.values()]

    def _years(self, text: str) -> dict[str, int | None]:
        """The year bounds a clause gives ("90s", "after 2000", "recent", "classics"):
        handed to :func:`~recfunnel.serve.chat_state.apply`, which resolves what they
        contradict."""
        m = re.search(r"\b(?:(19|20)?(\d)0)'?s\b", text)
        if m:
            century = m.group(1) or ("20" if m.group(2) in "012" else "19")
            start = int(f"{century}{m.group(2)}0")
            return {"year_min": start, "year_max": start + 9}
        out: dict[str, int | None] = {}
        if m := re.search(r"\b(after|since|newer than)\s+((?:19|20)\d\d)\b", text):
            out["year_min"] = int(m.group(2)) + (m.group(1) != "since")
        if m := re.search(r"\b(before|older than)\s+((?:19|20)\d\d)\b", text):
            out["year_max"] = int(m.group(2)) - 1
        if not out and re.search(r"\b(recent|new|newer|latest)\b", text):
            return {"year_min": self.max_year - 10, "year_max": None}
        if not out and re.search(r"\b(old|older|classic|classics)\b", text):
            return {"year_min": None, "year_max": 1979}
        return out
