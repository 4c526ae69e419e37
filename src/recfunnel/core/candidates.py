"""Candidate lists: one stage's ranked items for many requests, as padded 2-D arrays.

A :class:`CandidateBatch` is what every stage returns (row = request, column = rank), so
stages, metrics and engines work on whole arrays instead of per-user Python objects. The
helpers below are the only ways a pipeline combines lists: cut to a depth, merge a
reordered head back onto the rest, or shuffle a head's presentation (the position probe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recfunnel.core.types import PAD

__all__ = [
    "PAD",
    "CandidateBatch",
    "Candidates",
    "cut",
    "merge_head",
    "prev_ranks",
    "shuffled_head",
]


@dataclass(frozen=True, eq=False)
class Candidates:
    """One user's ranked items from one stage (best first)."""

    items: np.ndarray
    scores: np.ndarray
    stage: str

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError("items and scores differ in length")

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, eq=False)
class CandidateBatch:
    """Many users' ranked items from one stage, as padded 2-D arrays (row = request).

    Short rows are padded with ``PAD`` items and ``-inf`` scores; ``fallback`` marks rows
    the stage could not serve itself and filled from a fallback (counted in diagnostics).
    """

    items: np.ndarray
    scores: np.ndarray
    stage: str
    fallback: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-cell arrays aligned with ``items`` (e.g. a reranker's raw LLM score and each
    item's input position), read by diagnostics."""

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(f"items {self.items.shape} and scores {self.scores.shape} differ")

    def __len__(self) -> int:
        return self.items.shape[0]

    @property
    def depth(self) -> int:
        return self.items.shape[1]

    def row(self, i: int) -> Candidates:
        keep = self.items[i] != PAD
        return Candidates(self.items[i][keep], self.scores[i][keep], self.stage)

    def rows(self) -> list[Candidates]:
        return [self.row(i) for i in range(len(self))]

    @property
    def reorders(self) -> bool:
        """Whether the stage may have changed its input's order. One that did says where
        each item stood (``extras["input_pos"]``, what the position probe reads); one that
        keeps the order (an LLM feature stage) passes its input's scores on."""
        return "input_pos" in self.extras

    @property
    def fallback_rate(self) -> float:
        return 0.0 if self.fallback is None or len(self) == 0 else float(self.fallback.mean())

    @classmethod
    def from_rows(
        cls, rows: Sequence[Candidates], stage: str, depth: int | None = None
    ) -> CandidateBatch:
        depth = depth if depth is not None else max((len(r) for r in rows), default=0)
        items = np.full((len(rows), depth), PAD, dtype=np.int64)
        scores = np.full((len(rows), depth), -np.inf, dtype=np.float64)
        for i, r in enumerate(rows):
            n = min(len(r), depth)
            items[i, :n] = r.items[:n]
            scores[i, :n] = r.scores[:n]
        return cls(items, scores, stage)

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The batch restricted to ``rows`` (a boolean mask or indices), extras included."""
        fb = None if self.fallback is None else self.fallback[rows]
        extras = {k: v[rows] for k, v in self.extras.items()}
        return CandidateBatch(self.items[rows], self.scores[rows], self.stage, fb, extras)


def prev_ranks(batch: CandidateBatch) -> np.ndarray:
    """Each item's rank in the previous stage: ``extras["prev_rank"]`` when the input was
    shuffled (the ranker's order survives as data), else its position; -1 for padding."""
    if "prev_rank" in batch.extras:
        return batch.extras["prev_rank"]
    return np.where(batch.items != PAD, np.arange(batch.depth)[None, :], -1)


def merge_head(head: CandidateBatch, full: CandidateBatch) -> CandidateBatch:
    """The reordered head followed by the rest of ``full`` in its own order.

    Scores become positions (best = 0, then -1, …) because head and tail scores come from
    different stages and are not comparable; metrics read only the order.
    """
    n_head = head.depth
    items = np.concatenate([head.items, full.items[:, n_head:]], axis=1)
    scores = -np.arange(items.shape[1], dtype=np.float64)[None, :].repeat(len(items), axis=0)
    scores = np.where(items == PAD, -np.inf, scores)
    return CandidateBatch(items, scores, "final", fallback=head.fallback)


def cut(batch: CandidateBatch, k: int) -> CandidateBatch:
    """The batch's first ``k`` columns (the same batch when it is no deeper)."""
    if batch.depth <= k:
        return batch
    extras = {key: v[:, :k] for key, v in batch.extras.items()}
    return CandidateBatch(batch.items[:, :k], batch.scores[:, :k], batch.stage, batch.fallback,
                          extras)  # fmt: skip


def shuffled_head(batch: CandidateBatch, top: int, seed: int) -> CandidateBatch:
    """The batch with each row's first ``top`` items in a seeded random order.

    Only the presentation is shuffled: ``extras["prev_rank"]`` keeps each item's rank in
    ``batch``, so a stage that shows or blends in the previous stage's rank still has it.
    """
    items, scores = batch.items.copy(), batch.scores.copy()
    ranks = prev_ranks(batch).copy()
    rng = np.random.default_rng(seed)
    for r in range(len(items)):
        n = int((items[r, :top] != PAD).sum())
        perm = rng.permutation(n)
        items[r, :n] = items[r, :n][perm]
        scores[r, :n] = scores[r, :n][perm]
        ranks[r, :n] = ranks[r, :n][perm]
    return CandidateBatch(items, scores, batch.stage, batch.fallback, {"prev_rank": ranks})
