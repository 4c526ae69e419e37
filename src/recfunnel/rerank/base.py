"""The reranker contract: reorder the head of each request's candidate list.

A reranker sees the previous stage's top candidates (with their scores and ranks) and
returns the same items in a new order; the funnel appends the untouched tail, so recall
beyond the head is never lost and a weak reranker can only move what it was shown.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from recfunnel.types import PAD, CandidateBatch, Catalog, Interactions, Request


class Reranker(abc.ABC):
    kind: ClassVar[str] = "reranker"

    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        self.catalog_ = catalog
        return self

    @abc.abstractmethod
    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        """The items of each row of ``head``, reordered (best first)."""

    @property
    def stage(self) -> str:
        return f"rerank:{self.kind}"

    def stats(self) -> dict[str, Any]:
        """Figures of the last :meth:`rerank` call (LLM calls, tokens, invalid outputs)."""
        return {}


def prev_ranks(batch: CandidateBatch) -> np.ndarray:
    """Each item's rank in the previous stage: ``extras["prev_rank"]`` when the input was
    shuffled (the ranker's order survives as data), else its position; -1 for padding."""
    if "prev_rank" in batch.extras:
        return batch.extras["prev_rank"]
    return np.where(batch.items != PAD, np.arange(batch.depth)[None, :], -1)


def merge_head(head: CandidateBatch, full: CandidateBatch) -> CandidateBatch:
    """The reranked head followed by the rest of ``full`` in its own order.

    Scores become positions (best = 0, then -1, …) because head and tail scores come from
    different stages and are not comparable; metrics read only the order.
    """
    n_head = head.depth
    items = np.concatenate([head.items, full.items[:, n_head:]], axis=1)
    scores = -np.arange(items.shape[1], dtype=np.float64)[None, :].repeat(len(items), axis=0)
    scores = np.where(items == PAD, -np.inf, scores)
    return CandidateBatch(items, scores, "final", fallback=head.fallback)
