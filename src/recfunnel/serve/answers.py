"""Shaping an answer: the items a request is shown (scores, reasons, the guard), and why
an answer fell back, named by its real cause."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recfunnel.core.candidates import PAD
from recfunnel.core.types import Catalog, Request
from recfunnel.serve.metrics import Metrics
from recfunnel.stages.base import Trace
from recfunnel.stages.explain.grounded import template_reason

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One recommended item as the API shows it."""

    index: int
    item_id: Any
    title: str
    score: float
    explanation: str
    explanation_source: str
    genres: list[str]
    year: int | None


@dataclass
class Answer:
    items: list[Item]
    route: str
    fallback: bool
    fallback_reason: str | None
    timings_ms: dict[str, float]
    candidates: set[int] = field(repr=False)
    """Every item the funnel's stages produced for this request: what the guard allows."""
    llm_calls: int = 0
    pool: list[tuple[int, float]] = field(default_factory=list, repr=False)
    """The ranked list before the LLM stages (after any narrowing), with its scores: what
    a chat filter narrows later without retrieving again."""


def traces_of(trace: Trace) -> list[Trace]:
    """A trace and, for a router's, the traces of the paths that answered."""
    return [trace, *(t for _, _, t in trace.parts or [])]


def candidates_of(trace: Trace) -> set[int]:
    return {int(i) for t in traces_of(trace) for b in t.batches.values()
            for i in b.items[0] if i != PAD}  # fmt: skip


def pool_of(trace: Trace, limit: int = 100) -> list[tuple[int, float]]:
    """The first ``limit`` items of the trace's one-row list, with their scores."""
    assert trace.final is not None
    row, scores = trace.final.items[0], trace.final.scores[0]
    keep = row != PAD
    return [(int(i), round(float(s), 6) if np.isfinite(s) else 0.0)
            for i, s in zip(row[keep][:limit], scores[keep][:limit], strict=True)]  # fmt: skip


def fallback_cause(pre: Trace, res: Trace) -> str | None:
    """Why the answer's list is a stage's fallback: ``llm-fallback`` when an LLM stage
    kept its input order, else ``<stage>-fallback`` for the first stage that fell back
    (``retrieve:cf-fallback``: a request with no history, popularity instead); None when
    the final list is no fallback."""
    final = res.final
    if final is None or final.fallback is None or not bool(final.fallback[0]):
        return None
    before = {id(b) for t in traces_of(pre) for b in t.batches.values()}
    for t in traces_of(res):
        for batch in t.batches.values():
            if batch.fallback is not None and bool(batch.fallback[0]):
                return "llm-fallback" if id(batch) not in before else f"{batch.stage}-fallback"
    return f"{final.stage}-fallback"


class Shaper:
    """Turns a funnel list into the API's items: the stage scores, a reason for each (the
    LLM's when it wrote one, else a template), and the guard."""

    def __init__(self, catalog: Catalog, metrics: Metrics) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self._item_ids = catalog.ids_of(np.arange(catalog.n_items))

    def items(self, request: Request, final: Any, res: Trace, candidates: set[int]) -> list[Item]:
        """The answer's items with scores and reasons; anything that is not one of the
        funnel's candidates is dropped and counted (it cannot happen; the guard proves it)."""
        shown = final.items[0][final.items[0] != PAD]
        stage_score: dict[int, float] = {}
        for batch in (b for t in traces_of(res) for b in t.batches.values()):  # later win
            hit = np.isin(batch.items[0], shown)
            stage_score.update(zip(batch.items[0][hit].tolist(), batch.scores[0][hit].tolist(),
                                   strict=True))  # fmt: skip
        llm_reasons = {e.item: e for e in (res.explanations or [[]])[0]}
        scored = [(int(i), stage_score.get(int(i), 0.0)) for i in final.items[0] if i != PAD]
        return self.listed(request, scored, candidates, llm_reasons)

    def listed(self, request: Request, scored: list[tuple[int, float]], candidates: set[int],
               llm_reasons: dict[int, Any] | None = None) -> list[Item]:  # fmt: skip
        """Items for (index, score) pairs in order; the guard drops a non-candidate."""
        cat = self.catalog
        out = []
        for i, score in scored:
            if i not in candidates:
                self.metrics.guard_dropped.inc()
                log.error("guard: item %d is not a funnel candidate; dropped", i)
                continue
            exp = (llm_reasons or {}).get(i)
            text, source = (exp.text, exp.source) if exp else (
                template_reason(cat, i, request.history), "template")  # fmt: skip
            year = cat.years[i]
            out.append(Item(
                i, self._item_ids[i], str(cat.titles[i]), round(score, 6),
                text, source, sorted(cat.genre_sets[i]),
                None if np.isnan(year) else int(year),
            ))  # fmt: skip
        return out
