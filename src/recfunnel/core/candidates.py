"""Candidate lists: one stage's ranked items for many requests, as padded 2-D arrays.

A :class:`CandidateBatch` is what every stage returns (row = request, column = rank), so
stages, metrics and engines work on whole arrays instead of per-user Python objects. The
helpers below are the only ways a pipeline combines lists: cut to a depth, merge a
reordered head back onto the rest, or shuffle a head's presentation (the position probe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recfunnel.core.types import PAD

__all__ = [
    "PAD",
    "CandidateBatch",
    "cut",
    "locate",
    "merge_head",
    "permutes",
    "prev_ranks",
    "shuffled_head",
]


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
    stats: Any = None
    """What the call that made this batch did (a stage's ``StageStats``: LLM calls, tokens,
    invalid outputs); None for a stage that reports nothing. A call hands its figures back
    with its answer, so a stage keeps no per-call state."""

    def __post_init__(self) -> None:
        if self.items.ndim != 2:
            raise ValueError(f"items must be 2-D (rows x candidates), got shape {self.items.shape}")
        if self.items.shape != self.scores.shape:
            raise ValueError(f"items {self.items.shape} and scores {self.scores.shape} differ")

    def __len__(self) -> int:
        return self.items.shape[0]

    @property
    def depth(self) -> int:
        return self.items.shape[1]

    @property
    def reorders(self) -> bool:
        """Whether the stage may have changed its input's order. One that did says where
        each item stood (``extras["input_pos"]``, what the position probe reads); one that
        keeps the order (an LLM feature stage) passes its input's scores on."""
        return "input_pos" in self.extras

    @property
    def fallback_rate(self) -> float:
        return 0.0 if self.fallback is None or len(self) == 0 else float(self.fallback.mean())

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The batch restricted to ``rows`` (a boolean mask or indices), extras included
        (not ``stats``: a call's figures are not divisible by row)."""
        fb = None if self.fallback is None else self.fallback[rows]
        extras = {k: v[rows] for k, v in self.extras.items()}
        return CandidateBatch(self.items[rows], self.scores[rows], self.stage, fb, extras)


def prev_ranks(batch: CandidateBatch) -> np.ndarray:
    """Each item's rank in the previous stage: ``extras["prev_rank"]`` when the input was
    shuffled (the ranker's order survives as data), else its position; -1 for padding."""
    if "prev_rank" in batch.extras:
        return batch.extras["prev_rank"]
    return np.where(batch.items != PAD, np.arange(batch.depth)[None, :], -1)


def locate(items: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Each cell's column in the same row of ``within`` (-1 for padding or an item that row
    does not hold): where a head stage's output items stood in its input, computed once by
    the funnel for every head stage (``extras["input_pos"]``), so no stage does it by hand.
    Vectorised: rows are offset so one sorted search serves the whole batch."""
    n, depth = within.shape
    if n == 0 or depth == 0 or items.size == 0:
        return np.full(items.shape, -1, dtype=np.int64)
    span = int(max(within.max(), items.max())) + 2  # item ids + 1 (PAD is -1) fit below it
    base = np.arange(n, dtype=np.int64)[:, None] * span
    keys = (within.astype(np.int64) + 1 + base).ravel()
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    query = (items.astype(np.int64) + 1 + base).ravel()
    at = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
    found = (ordered[at] == query) & (items.ravel() != PAD)
    return np.where(found, order[at] % depth, -1).reshape(items.shape)


def permutes(out: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per row, whether ``out`` holds exactly ``head``'s items (padding included), in any
    order: the one thing a head stage may do to its input."""
    if out.shape != head.shape:
        return np.zeros(len(head), dtype=bool)
    return (np.sort(out, axis=1) == np.sort(head, axis=1)).all(axis=1)


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
                          extras, batch.stats)  # fmt: skip


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
