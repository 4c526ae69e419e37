"""The retriever contract and the batched top-k helpers all retrievers share.

A retriever answers many requests in one call and returns a
:class:`~recfunnel.types.CandidateBatch`; a request's history items never come back.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recfunnel.types import (
    PAD,
    CandidateBatch,
    Catalog,
    Interactions,
    Request,
    history_matrix,
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


def topk_dense(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of each row of a dense score matrix, excluded cells masked.

    Ties break towards the lower item index, so results are deterministic.
    """
    s = np.array(scores, dtype=np.float64, copy=True)
    coo = exclude.tocoo()
    s[coo.row, coo.col] = -np.inf
    k_eff = min(k, s.shape[1])
    part = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff] if k_eff < s.shape[1] else None
    cand = part if part is not None else np.tile(np.arange(s.shape[1]), (s.shape[0], 1))
    cand_scores = np.take_along_axis(s, cand, axis=1)
    order = np.lexsort((cand, -cand_scores), axis=1)
    items = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(cand_scores, order, axis=1)
    items[~np.isfinite(vals)] = PAD
    if k_eff < k:
        pad = k - k_eff
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=PAD)
        vals = np.pad(vals, ((0, 0), (0, pad)), constant_values=-np.inf)
    return items, vals


def chunked_topk(
    requests: Sequence[Request],
    n_items: int,
    k: int,
    score_rows: Callable[[Sequence[Request], sp.csr_matrix], np.ndarray],
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``score_rows`` (requests, their history matrix) -> dense scores, chunk by chunk,
    so memory stays at ``chunk × n_items`` however many users are asked."""
    items, scores = [], []
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        hist = history_matrix(part, n_items)
        it, sc = topk_dense(score_rows(part, hist), hist, k)
        items.append(it)
        scores.append(sc)
    if not items:
        return np.empty((0, k), np.int64), np.empty((0, k))
    return np.vstack(items), np.vstack(scores)
