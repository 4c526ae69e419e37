"""The LLM as an enhancer: expand each item's thin text into a short description.

Descriptions are generated offline, cached per item and model (through the LLM answer
cache, so a rerun is free), and appended to the item text the content retriever embeds.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pydantic import Field

from recfunnel.core import progress
from recfunnel.core.config import Strict
from recfunnel.core.types import Catalog, Interactions
from recfunnel.llm.base import LLM, LLMConfig, Message
from recfunnel.stages.text import PromptStyle

log = logging.getLogger(__name__)

ENRICHED = "enriched"
"""Catalog column holding text + description (what the content retriever embeds)."""


class EnrichConfig(Strict):
    """LLM-written descriptions appended to the item text the content retriever embeds."""

    llm: LLMConfig = Field(default_factory=lambda: LLMConfig(repeat_penalty=1.3))
    limit: int | None = Field(
        None, ge=1, description="Describe only the most popular N items (None: every item)."
    )
    max_tokens: int = Field(64, ge=8)
    batch_size: int = Field(16, ge=1)


PROMPT_VERSION = "enrich/1"
"""Part of every cached description's key: bump it when :func:`enrich_prompt` changes."""


def enrich_prompt(catalog: Catalog, item: int, style: PromptStyle) -> list[Message]:
    """Ask for a short description an embedder can use: genre, tone, themes, audience."""
    about = str(catalog.frame.iloc[int(item)]["text"])
    user = (
        f"{style.noun.capitalize()}: {about}\n\n"
        f"Describe this {style.noun} in two short sentences: its genre, tone, main themes "
        f"and who would enjoy it."
    )
    system = f"You write short, factual {style.noun} descriptions."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pick_items(catalog: Catalog, train: Interactions | None, limit: int | None) -> np.ndarray:
    """All items, or the ``limit`` most interacted-with (ties: lower index first)."""
    if limit is None or limit >= catalog.n_items:
        return np.arange(catalog.n_items)
    counts = train.item_counts() if train is not None else np.zeros(catalog.n_items, dtype=np.int64)
    return np.sort(np.lexsort((np.arange(catalog.n_items), -counts))[:limit])


def clean(text: str) -> str:
    """One line, no list markers or quotes the model likes to add."""
    line = " ".join(text.replace("\n", " ").split())
    return line.strip(" \"'*-")


def describe_items(
    catalog: Catalog, llm: LLM, items: np.ndarray, max_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """One description per item (cached per item and model)."""
    style = PromptStyle(noun=catalog.noun)
    out: list[str] = []
    chunks = range(0, len(items), batch_size)
    for start in progress.track(chunks, "enrich", min_steps=3, unit="batch"):
        part = items[start : start + batch_size]
        prompts = [enrich_prompt(catalog, int(i), style) for i in part]
        answers = llm.complete_many(prompts, max_tokens=max_tokens, stop=["\n\n"],
                                    template=PROMPT_VERSION)  # fmt: skip
        out.extend(clean(a.text) for a in answers)
    return out


def with_descriptions(catalog: Catalog, items: np.ndarray, descriptions: list[str]) -> Catalog:
    """A copy of ``catalog`` with an ``enriched`` column: text + description where known."""
    enriched = catalog.frame["text"].astype(str).to_numpy(dtype=object).copy()
    for i, d in zip(items, descriptions, strict=True):
        if d:
            enriched[int(i)] = f"{enriched[int(i)]}. {d}"
    frame = catalog.frame.assign(**{ENRICHED: pd.Series(enriched, index=catalog.frame.index)})
    return Catalog(frame, noun=catalog.noun)


def enrich_catalog(
    catalog: Catalog, train: Interactions | None, config: EnrichConfig, llm: LLM | None = None
) -> Catalog:
    """Describe the chosen items with the configured LLM and return the enriched catalog."""
    if llm is None:
        from recfunnel.llm import build_llm

        llm = build_llm(config.llm)
    items = pick_items(catalog, train, config.limit)
    log.info("enriching %d items with %s", len(items), llm.model_id[:24])
    descriptions = describe_items(catalog, llm, items, config.max_tokens, config.batch_size)
    return with_descriptions(catalog, items, descriptions)
