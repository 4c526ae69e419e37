"""What a request names, read off the catalog: known users, item ids, titles in any
spelling the title index knows, and the page's title search."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from recfunnel.core.errors import RecfunnelError, UnknownItem
from recfunnel.core.titles import TitleIndex, normalize, title_forms
from recfunnel.core.types import Dataset, Request
from recfunnel.data.splits import ordered_events


class EmptyRequest(RecfunnelError):
    """A request with nothing to recommend from."""


class Lookup:
    """Users, items and titles of one dataset (each user's history in event order)."""

    def __init__(self, data: Dataset, seed: int) -> None:
        self.data = data
        catalog, inter = data.catalog, data.interactions
        events = ordered_events(inter, seed, data.timestamps_real)
        bounds = np.searchsorted(events["user"].to_numpy(), np.arange(inter.n_users + 1))
        items = events["item"].to_numpy()
        self.history = [items[bounds[u] : bounds[u + 1]] for u in range(inter.n_users)]
        self.titles = TitleIndex(catalog)
        self._norm_titles = [normalize(t) for t in catalog.frame["title"].astype(str)]
        self.popularity = inter.item_counts()

    def resolve(
        self,
        user_id: Any = None,
        history: Sequence[Any] = (),
        text: str | None = None,
        goal: str | None = None,
    ) -> Request:
        """A funnel request: a known user's history plus any listed items (ids or titles),
        and the free text. Raises UnknownUser / UnknownItem / EmptyRequest."""
        user = None
        items: list[int] = []
        if user_id is not None:
            user = self.data.interactions.user_index(user_id)
            items = [int(i) for i in self.history[user]]
        for h in history:
            i = self.item_of(h)
            if i not in items:
                items.append(i)
        query = text.strip() if text and text.strip() else None
        if not items and query is None:
            raise EmptyRequest(
                "nothing to recommend from: give a known user_id, a non-empty history "
                "(item ids or titles) or some text"
            )
        return Request(user, np.asarray(items, dtype=np.int64), query,
                       goal.strip() if goal and goal.strip() else None)  # fmt: skip

    def item_of(self, ref: Any) -> int:
        """Catalog index of an item id (a number) or a title ("Heat", "Matrix, The (1999)");
        a title several items share means the most rated one."""
        if isinstance(ref, bool):
            raise UnknownItem(f"{ref!r} is not an item id or title")
        if isinstance(ref, int) or (isinstance(ref, str) and re.fullmatch(r"\s*\d+\s*", ref)):
            return int(self.data.catalog.index_of([int(ref)])[0])
        if isinstance(ref, str) and ref.strip():
            forms = [f for f in (normalize(ref), *sorted(title_forms(ref))) if f]
            for form in forms:
                hits = self.titles.by_form.get(form)
                if hits:
                    return self.most_rated(hits)
            raise UnknownItem(f"no catalog title matches {ref.strip()[:80]!r}")
        raise UnknownItem(f"{ref!r} is not an item id or title")

    def most_rated(self, items: set[int]) -> int:
        """The one a shared title means: the most rated (lowest index on ties)."""
        return max(items, key=lambda i: (self.popularity[i], -i))

    def search(self, q: str, limit: int = 10) -> list[dict[str, Any]]:
        """Titles containing every word of ``q``, most rated first (prefix matches lead)."""
        words = normalize(q).split()
        if not words:
            return []
        hits = [i for i, t in enumerate(self._norm_titles) if all(w in t for w in words)]
        first = words[0]
        hits.sort(key=lambda i: (not self._norm_titles[i].startswith(first),
                                 -self.popularity[i], i))  # fmt: skip
        frame = self.data.catalog.frame
        return [
            {"item_id": self.data.catalog.ids_of([i])[0], "title": str(frame["title"].iloc[i]),
             "genres": list(frame["genres"].iloc[i])}
            for i in hits[:limit]
        ]  # fmt: skip
