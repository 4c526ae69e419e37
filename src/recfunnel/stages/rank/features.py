"""The learned ranker's features, one table of groups: each group names its columns and
computes them, in one place, so adding a group is one entry (not two parallel if-chains).

Features of each (request, candidate), by group:

- ``pools``: every retrieval pool's score and rank (a miss gets NaN and the pool's depth);
- ``input``: the score and position in the list the ranker is given;
- ``item``: log-popularity and release year;
- ``history``: genre overlap with the history (Jaccard, share), embedding similarity to the
  history profile, history length;
- ``liked``: how many training ratings of the item are high (log);
- ``stages``: every earlier head stage's score and named features (e.g. an earlier ranker's
  score, an LLM feature stage's scores and ranks), looked up by item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from recfunnel.core.candidates import PAD, CandidateBatch, locate
from recfunnel.core.types import Request
from recfunnel.stages.base import Trace

Group = Literal["pools", "input", "item", "history", "liked", "stages"]
BASIC: tuple[Group, ...] = ("pools", "input", "item", "history")
BOOKKEEPING = ("input_pos", "prev_rank", "llm_score")
"""Extras that describe where an item was, not what it is: never features."""


class ItemState(Protocol):
    """What the ranker learned about items at fit time (read by the groups below)."""

    popularity_: np.ndarray
    liked_: np.ndarray
    year_: np.ndarray
    genres_: np.ndarray
    content_: Any


@dataclass(frozen=True)
class Rows:
    """One feature pass: the requests, their trace, the head ranked and its item ids (PAD
    replaced by 0 for lookups)."""

    requests: Sequence[Request]
    trace: Trace
    head: CandidateBatch
    safe: np.ndarray


Names = Callable[[Trace], list[str]]
Columns = Callable[[ItemState, Rows], list[Any]]


def _pool_names(trace: Trace) -> list[str]:
    return [f"{p}:{x}" for p in trace.pools for x in ("score", "rank")]


def _pool_columns(state: ItemState, rows: Rows) -> list[Any]:
    cols: list[Any] = []
    for pool in rows.trace.pools.values():
        cols += looked_up(rows.head.items, pool, pool.scores, float(pool.depth))
    return cols


def _input_columns(state: ItemState, rows: Rows) -> list[Any]:
    n, depth = rows.head.items.shape
    return [rows.head.scores, np.broadcast_to(np.arange(depth, dtype=np.float64), (n, depth))]


def _history_columns(state: ItemState, rows: Rows) -> list[Any]:
    requests, safe = rows.requests, rows.safe
    n, depth = safe.shape
    hist_genres = np.zeros((n, state.genres_.shape[1]), dtype=np.float32)
    for r, req in enumerate(requests):
        if len(req.history):
            hist_genres[r] = state.genres_[req.history].mean(axis=0)
    cand_genres = state.genres_[safe]  # [n, depth, g]
    overlap = (cand_genres * (hist_genres[:, None, :] > 0)).sum(-1)
    union = np.maximum(((cand_genres + (hist_genres[:, None, :] > 0)) > 0).sum(-1), 1)
    prof, _ = state.content_.profiles(requests)
    emb = state.content_.item_embeddings_[safe]  # [n, depth, d]
    lengths = np.array([len(r.history) for r in requests], dtype=np.float64)
    return [overlap / union, (cand_genres * hist_genres[:, None, :]).sum(-1),
            np.einsum("ijd,id->ij", emb, prof).astype(np.float64),
            np.broadcast_to(lengths[:, None], (n, depth))]  # fmt: skip


def _stage_names(trace: Trace) -> list[str]:
    names: list[str] = []
    for stage, batch in head_stages(trace):
        own = [f"{stage}:score"] if batch.reorders else []
        names += [*own, *(f"{stage}:{k}" for k in feature_keys(batch))]
    return names


def _stage_columns(state: ItemState, rows: Rows) -> list[Any]:
    cols: list[Any] = []
    items = rows.head.items
    for _, batch in head_stages(rows.trace):
        if batch.reorders:  # a kept order's scores are its input's
            cols += looked_up(items, batch, batch.scores, None)
        for key in feature_keys(batch):
            cols += looked_up(items, batch, batch.extras[key], None)
    return cols


def _item_columns(state: ItemState, rows: Rows) -> list[Any]:
    return [state.popularity_[rows.safe], state.year_[rows.safe]]


GROUPS: dict[Group, tuple[Names, Columns]] = {
    "pools": (_pool_names, _pool_columns),
    "input": (lambda t: ["input:score", "input:rank"], _input_columns),
    "item": (lambda t: ["log_popularity", "year"], _item_columns),
    "history": (
        lambda t: ["genre_overlap", "genre_share", "embedding_sim", "history_len"],
        _history_columns,
    ),
    "liked": (lambda t: ["log_liked"], lambda s, r: [s.liked_[r.safe]]),
    "stages": (_stage_names, _stage_columns),
}
"""Each group: the names of its columns (from the trace's shape) and the columns."""


def feature_names(groups: Sequence[Group], trace: Trace) -> list[str]:
    return [name for g in groups for name in GROUPS[g][0](trace)]


def feature_matrix(state: ItemState, groups: Sequence[Group], requests: Sequence[Request],
                   trace: Trace, top_n: int) -> np.ndarray:  # fmt: skip
    """[users, top_n, features] for the head of ``trace``; PAD candidates get NaN rows."""
    head = trace.head(top_n)
    rows = Rows(requests, trace, head, np.where(head.items == PAD, 0, head.items))
    cols = [c for g in groups for c in GROUPS[g][1](state, rows)]
    x = np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=-1)
    x[head.items == PAD] = np.nan
    return x


def head_stages(trace: Trace) -> list[tuple[str, CandidateBatch]]:
    """The earlier head stages' outputs (rankers, rerankers, LLM feature stages)."""
    return [(n, b) for n, b in trace.batches.items() if trace.modes.get(n) == "head"]


def feature_keys(batch: CandidateBatch) -> list[str]:
    return [k for k, v in batch.extras.items()
            if k not in BOOKKEEPING and np.asarray(v).dtype.kind == "f"]  # fmt: skip


def looked_up(items: np.ndarray, batch: CandidateBatch, values: np.ndarray,
              miss_rank: float | None) -> list[np.ndarray]:  # fmt: skip
    """``values`` of each candidate where ``batch`` lists it (NaN where it does not), and,
    with ``miss_rank``, its position there (``miss_rank`` where absent)."""
    where = locate(items, batch.items)
    found = where >= 0
    got = np.take_along_axis(np.asarray(values, np.float64), np.maximum(where, 0), 1)
    out = [np.where(found, got, np.nan)]
    if miss_rank is not None:
        out.append(np.where(found, where, miss_rank).astype(np.float64))
    return out
