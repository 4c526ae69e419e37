"""How an item and a user's history read in a prompt: the one place every stage's prompt
(rerankers, explanations, enrichment, the chat) takes them from.

The history is listed newest first and truncated (``history_items``), titles are cut to
``title_chars``, and only what the catalog knows is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recfunnel.core.types import Catalog


@dataclass(frozen=True)
class PromptStyle:
    """How much of an item and a history a prompt shows, and what it calls an item."""

    noun: str = "item"
    history_items: int = 20
    title_chars: int = 60
    show_prev_rank: bool = False


def item_line(catalog: Catalog, item: int, style: PromptStyle) -> str:
    """'Title (1995) — Comedy, Drama': short, and only what the catalog knows."""
    row = catalog.frame.iloc[int(item)]
    title = str(row["title"])
    if len(title) > style.title_chars:
        title = title[: style.title_chars - 1].rstrip() + "…"
    year = row["year"]
    if year is not None and not (isinstance(year, float) and np.isnan(year)):
        try:
            y = int(year)
            if f"({y})" not in title:
                title = f"{title} ({y})"
        except (TypeError, ValueError):
            pass
    genres = row["genres"]
    return f"{title} — {', '.join(genres[:3])}" if len(genres) else title


def history_block(catalog: Catalog, history: np.ndarray, style: PromptStyle) -> str:
    """The user's most recent items, newest first; says so when there are none."""
    recent = list(history[::-1][: style.history_items])
    if not recent:
        return f"The user has not rated any {style.noun}s yet."
    lines = "\n".join(f"- {item_line(catalog, i, style)}" for i in recent)
    return f"{style.noun.capitalize()}s the user liked, most recent first:\n{lines}"
