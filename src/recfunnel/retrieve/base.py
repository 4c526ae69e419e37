"""The retriever contract and the batched top-k helpers all retrievers share.

A retriever answers many requests in one call and returns a
:class:`~recfunnel.types.CandidateBatch`; a request's history items never come back.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recfunnel.types import (
    PAD,
    CandidateBatch,
    Catalog,
    Interactions,
    Request,
    row_member,
)


class Retriever(abc.ABC):
    """Base of every candidate generator: ``fit`` once, then ``retrieve`` in batches."""

    kind: ClassVar[str] = "retriever"

    @abc.abstractmethod
    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        """Learn from training interactions; learned state goes in attributes ending in ``_``."""

    @abc.abstractmethod
    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        """The top ``k`` items for each request, history excluded, best first."""

    @property
    def stage(self) -> str:
        return f"retrieve:{self.kind}"


def keep_top(
    items: np.ndarray, scores: np.ndarray, exclude: sp.csr_matrix, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """From ranked rows (best first, PAD allowed), drop each row's excluded items and keep
    the first ``k`` that remain; rows with fewer are padded. Vectorised over all rows."""
    n = items.shape[0]
    keep = (items != PAD) & ~row_member(items, exclude)
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= k
    out_items = np.full((n, k), PAD, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float64)
    rows, cols = np.nonzero(keep)
    slot = rank[rows, cols] - 1
    out_items[rows, slot] = items[rows, cols]
    out_scores[rows, slot] = scores[rows, cols]
    return out_items, out_scores
