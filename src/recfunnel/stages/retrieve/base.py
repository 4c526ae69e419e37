"""What every retriever shares: the stage's ``pool`` mode and a batched top-k helper.

A retriever answers many requests in one call (``retrieve(requests, k)``, implicit-style)
and returns a :class:`~recfunnel.core.candidates.CandidateBatch`; a request's history
items never come back. As a stage it hands the trace its pool at the run's depth.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.types import Request, row_member
from recfunnel.stages.base import Stage, StageConfig, Trace

C = TypeVar("C", bound=StageConfig)


class Retriever(Stage[C]):
    """Base of every candidate generator: ``fit`` once, then ``retrieve`` in batches."""

    family = "retrieve"
    mode = "pool"
    shareable = True

    @abc.abstractmethod
    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        """The top ``k`` items for each request, history excluded, best first."""

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        return self.retrieve(requests, trace.depth)

    @property
    def stage(self) -> str:
        """The name its batches carry (``retrieve:<kind>``)."""
        return f"{self.family}:{self.config.kind}"


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
