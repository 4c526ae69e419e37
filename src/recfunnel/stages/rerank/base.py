"""What every reranker shares: it reorders the head of the list so far.

A reranker sees the previous stage's top candidates (with their scores and ranks) and
returns the same items in a new order; the funnel appends the untouched tail, so recall
beyond the head is never lost and a weak reranker can only move what it was shown.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.types import Request
from recfunnel.stages.base import Stage, StageConfig, Trace

C = TypeVar("C", bound=StageConfig)


def zscore(x: np.ndarray) -> np.ndarray:
    """``x`` standardised within its list (zeros when it is constant): how rerankers put
    scores of different scales on one footing before mixing them."""
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def user_rng(seed: int, request: Request, salt: int) -> np.random.Generator:
    """A generator that depends on the seed, the user and ``salt`` only (never on the batch
    a request arrives in), so shuffles and placebos are the same alone or in a batch."""
    user = -1 if request.user is None else request.user
    return np.random.default_rng([seed, user + 1, salt])


class Reranker(Stage[C]):
    """Base of the rerankers: ``rerank(requests, head)`` on the top ``top_n``."""

    family = "rerank"
    mode = "head"
    probed = True

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        return self.rerank(requests, trace.head(self.top_n))

    @abc.abstractmethod
    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        """The items of each row of ``head``, reordered (best first)."""
