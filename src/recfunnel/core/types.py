"""The plain objects every stage passes around: catalog, interactions, requests, splits.

Items and users are addressed by dense integer indices (0..n-1) everywhere inside recfunnel,
so retrieval and metrics can work on numpy arrays and sparse matrices; the catalog and the
interactions keep the mapping back to the dataset's own ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.core.errors import DatasetFormatError, UnknownItem, UnknownUser

PAD = -1
"""Item index that fills short rows of a candidate batch (never a real item)."""


@dataclass(frozen=True, eq=False)
class Catalog:
    """The items a funnel can recommend, with text an LLM or an embedder can read.

    ``frame`` is indexed 0..n-1 (the item index) and has the columns ``item_id`` (the
    dataset's id), ``title``, ``genres`` (tuple of str), ``year`` (nullable Int64) and
    ``text`` (one line describing the item).
    """

    frame: pd.DataFrame
    noun: str = "item"
    """What the items are ("movie", "artist"…): prompts call them that."""

    COLUMNS = ("item_id", "title", "genres", "year", "text")

    def __post_init__(self) -> None:
        missing = [c for c in self.COLUMNS if c not in self.frame.columns]
        if missing:
            raise DatasetFormatError(f"catalog frame lacks columns {missing}")
        if not self.frame.index.equals(pd.RangeIndex(len(self.frame))):
            raise DatasetFormatError("catalog frame must be indexed 0..n-1")
        if self.frame["item_id"].duplicated().any():
            dup = self.frame.loc[self.frame["item_id"].duplicated(), "item_id"].iloc[0]
            raise DatasetFormatError(f"catalog has duplicate item_id {dup!r}")

    @classmethod
    def build(
        cls,
        item_ids: Sequence[Any] | np.ndarray,
        titles: Sequence[str],
        genres: Sequence[Sequence[str]] | None = None,
        years: Sequence[Any] | None = None,
        tags: Sequence[Sequence[str]] | None = None,
        extra_text: Sequence[str] | None = None,
    ) -> Catalog:
        """Make a catalog; ``text`` is composed from title, year, genres and tags."""
        n = len(item_ids)
        genres_t = [tuple(g) for g in genres] if genres is not None else [()] * n
        years_s = pd.array(list(years) if years is not None else [None] * n, dtype="Int64")
        tags_t = [tuple(t) for t in tags] if tags is not None else [()] * n
        extra = list(extra_text) if extra_text is not None else [""] * n
        texts = [
            compose_text(str(t), g, None if pd.isna(y) else int(y), tg, ex)
            for t, g, y, tg, ex in zip(titles, genres_t, years_s, tags_t, extra, strict=True)
        ]
        frame = pd.DataFrame(
            {
                "item_id": list(item_ids),
                "title": [str(t) for t in titles],
                "genres": genres_t,
                "year": years_s,
                "text": texts,
            }
        )
        return cls(frame)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_items(self) -> int:
        return len(self.frame)

    @cached_property
    def titles(self) -> np.ndarray:
        return self.frame["title"].to_numpy(dtype=object)

    @cached_property
    def genre_sets(self) -> list[frozenset[str]]:
        """Each item's genres as a set (fast overlap tests)."""
        return [frozenset(g) for g in self.frame["genres"]]

    @cached_property
    def texts(self) -> list[str]:
        return self.frame["text"].tolist()

    @cached_property
    def years(self) -> np.ndarray:
        """Release year of each item as float (NaN when unknown)."""
        return self.frame["year"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)

    @cached_property
    def genre_matrix(self) -> np.ndarray:
        """[items, genres] 0/1 matrix (genres sorted by name; no genre: a zero row)."""
        names = sorted({g for gs in self.frame["genres"] for g in gs})
        index = {g: i for i, g in enumerate(names)}
        out = np.zeros((self.n_items, max(len(names), 1)), dtype=np.float64)
        for i, gs in enumerate(self.frame["genres"]):
            for g in gs:
                out[i, index[g]] = 1.0
        return out

    @cached_property
    def _index(self) -> dict[Any, int]:
        return {k: i for i, k in enumerate(self.frame["item_id"].tolist())}

    def index_of(self, item_ids: Iterable[Any]) -> np.ndarray:
        """Item indices of dataset ids; :class:`UnknownItem` names the first unknown one."""
        out = []
        for raw in item_ids:
            idx = self._index.get(raw)
            if idx is None:
                idx = self._index.get(_coerce_id(raw))
            if idx is None:
                raise UnknownItem(f"item {raw!r} is not in the catalog ({self.n_items} items)")
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def ids_of(self, indices: np.ndarray | Sequence[int]) -> list[Any]:
        """Dataset item ids of item indices (PAD entries are skipped)."""
        col = self.frame["item_id"].to_numpy()
        return [col[i].item() if hasattr(col[i], "item") else col[i] for i in indices if i >= 0]


def _coerce_id(raw: Any) -> Any:
    """Let '42' find item 42 and 42 find '42' (ids typed on a command line or in JSON)."""
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            return raw
    return str(raw)


def compose_text(
    title: str,
    genres: Sequence[str] = (),
    year: int | None = None,
    tags: Sequence[str] = (),
    extra: str = "",
) -> str:
    """One readable line per item: what the embedder and the LLM see."""
    parts = [title if year is None or f"({year})" in title else f"{title} ({year})"]
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    if extra:
        parts.append(extra)
    return ". ".join(parts)


@dataclass(frozen=True, eq=False)
class Interactions:
    """User–item events with dense indices.

    ``frame`` columns: ``user`` and ``item`` (int64 indices), ``rating`` (float, NaN when the
    data is implicit), ``timestamp`` (float seconds or any order key; NaN when unknown) and
    ``weight`` (float, e.g. a listening count; 1 by default). ``user_ids[u]`` is the dataset's
    id of user index ``u``.
    """

    frame: pd.DataFrame
    user_ids: np.ndarray
    n_items: int

    COLUMNS = ("user", "item", "rating", "timestamp", "weight")

    def __post_init__(self) -> None:
        missing = [c for c in self.COLUMNS if c not in self.frame.columns]
        if missing:
            raise DatasetFormatError(f"interactions frame lacks columns {missing}")
        if len(self.frame):
            if self.frame["item"].min() < 0 or self.frame["item"].max() >= self.n_items:
                raise DatasetFormatError("interaction item index outside the catalog")
            if self.frame["user"].min() < 0 or self.frame["user"].max() >= len(self.user_ids):
                raise DatasetFormatError("interaction user index outside user_ids")

    @classmethod
    def build(
        cls,
        users: Sequence[Any] | np.ndarray,
        items: np.ndarray,
        n_items: int,
        rating: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> Interactions:
        """Index dataset user ids (sorted, so indices are stable across runs) and assemble."""
        user_codes, user_ids = pd.factorize(pd.Series(users), sort=True)
        n = len(user_codes)
        nan = np.full(n, np.nan)
        frame = pd.DataFrame(
            {
                "user": user_codes.astype(np.int64),
                "item": np.asarray(items, dtype=np.int64),
                "rating": nan if rating is None else np.asarray(rating, dtype=np.float64),
                "timestamp": nan if timestamp is None else np.asarray(timestamp, dtype=np.float64),
                "weight": np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64),
            }
        )
        return cls(frame, np.asarray(user_ids), n_items)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def has_ratings(self) -> bool:
        return bool(self.frame["rating"].notna().any())

    @property
    def has_timestamps(self) -> bool:
        return bool(self.frame["timestamp"].notna().all()) and len(self.frame) > 0

    def with_frame(self, frame: pd.DataFrame) -> Interactions:
        """Same users and items, other rows (indices keep their meaning)."""
        return Interactions(frame.reset_index(drop=True), self.user_ids, self.n_items)

    def user_index(self, user_id: Any) -> int:
        """Index of a dataset user id; raises :class:`UnknownUser`."""
        hits = np.flatnonzero(self.user_ids == user_id)
        if len(hits) == 0 and isinstance(user_id, str) and user_id.lstrip("-").isdigit():
            hits = np.flatnonzero(self.user_ids == int(user_id))
        if len(hits) == 0:
            raise UnknownUser(f"user {user_id!r} is not in the data ({self.n_users} users)")
        return int(hits[0])

    def to_csr(self, values: str = "binary") -> sp.csr_matrix:
        """Users × items matrix; ``values`` is 'binary', 'weight' or 'rating'."""
        f = self.frame
        if values == "binary":
            data = np.ones(len(f), dtype=np.float32)
        elif values in ("weight", "rating"):
            data = f[values].fillna(1.0).to_numpy(dtype=np.float32)
        else:
            raise ValueError(f"values must be binary, weight or rating, not {values!r}")
        m = sp.csr_matrix(
            (data, (f["user"].to_numpy(), f["item"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        if values == "binary":
            m.data[:] = 1.0
        return m

    def item_counts(self) -> np.ndarray:
        """How many interactions each item has (the popularity signal)."""
        return np.bincount(self.frame["item"].to_numpy(), minlength=self.n_items)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: interactions, the catalog, and what the data can support."""

    name: str
    interactions: Interactions
    catalog: Catalog
    timestamps_real: bool = True
    """False when event order is synthetic (positions in a shipped sequence, or none)."""
    prefiltered: bool = False
    """True when the published files are already filtered (leave-last-out skips 5-core)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Request:
    """What a funnel is asked: a user (or none), their history, optional free text and goal."""

    user: int | None
    history: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Item indices the user has interacted with, oldest first."""
    query: str | None = None
    goal: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", np.asarray(self.history, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Requests to answer and, for each, the item indices that count as relevant."""

    requests: list[Request]
    truth: list[np.ndarray]

    def __post_init__(self) -> None:
        if len(self.requests) != len(self.truth):
            raise ValueError("requests and truth differ in length")

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(frozen=True, eq=False)
class Split:
    """A protocol's output: what models may train on, and what they are judged on."""

    protocol: str
    seed: int
    train: Interactions
    test: EvalSet
    valid: EvalSet | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timestamps_real: bool = True
    """False when event order is synthetic (a seeded shuffle per user): whoever simulates the
    protocol on training users orders their events the same way."""
    new_items: np.ndarray | None = None
    """Item indices first seen at or after a temporal cutoff (in the catalog, absent from
    ``train``); None for protocols without a global cutoff."""


def history_matrix(requests: Sequence[Request], n_items: int) -> sp.csr_matrix:
    """Requests × items binary matrix of histories (built in one go, no per-item loop)."""
    lengths = np.fromiter((len(r.history) for r in requests), dtype=np.int64, count=len(requests))
    cols = np.concatenate([r.history for r in requests]) if lengths.sum() else np.empty(0, np.int64)
    rows = np.repeat(np.arange(len(requests)), lengths)
    m = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(requests), n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def row_member(items: np.ndarray, sets: sp.csr_matrix) -> np.ndarray:
    """``out[u, j]`` = items[u, j] is a column of row u of ``sets``; PAD is never a member.

    One sorted-key lookup over all rows (no per-row Python loop).
    """
    n_cols = sets.shape[1]
    n = items.shape[0]
    row_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(sets.indptr)) * n_cols
    set_keys = row_keys + sets.indices.astype(np.int64)
    keys = np.arange(n, dtype=np.int64)[:, None] * n_cols + items
    return np.isin(keys, set_keys) & (items != PAD)


def truth_matrix(truth: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Users × items binary matrix of relevant items (same layout as :func:`history_matrix`)."""
    return history_matrix([Request(None, t) for t in truth], n_items)
