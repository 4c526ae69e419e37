"""Cold-start training lists simulated from training users, without leakage.

A cold-start test user keeps its first ``history`` items in the training data; everything
after is held out. Training users are simulated the same way, at several history cuts:
the first ``c`` items are the request, the later liked items its labels. The candidate
pools that make each list come from the pipeline's earlier stages fitted **afresh** on the
training split minus that user's events from position ``c`` on (per fold of users and per
cut), so no list is ranked by a model that saw its labels. Users who are test or
validation users of the split never give a list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, field_validator

from recfunnel.core.config import Strict
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Interactions, Request, Split
from recfunnel.data.splits import ordered_events


class ListsConfig(Strict):
    """Where a learned ranker's training lists come from (see the module's docstring)."""

    cuts: list[int] = Field(
        default_factory=lambda: [1, 3, 5, 10, 20], min_length=1,
        description="history lengths simulated per training user (one list each)",
    )  # fmt: skip
    folds: int = Field(
        4, ge=2,
        description="user folds: each fold's lists come from pools refitted without its "
        "users' later events (folds × cuts refits)",
    )  # fmt: skip
    max_users: int | None = Field(
        None, ge=1, description="simulated users, a seeded sample (None: every eligible one)"
    )

    @field_validator("cuts")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError("every history cut must be >= 1")
        return sorted(set(v))


@dataclass
class ListGroup:
    """The lists of one fold of users at one cut, and the training data their pools are
    fitted on."""

    fold: int
    cut: int
    requests: list[Request]
    truth: list[np.ndarray]
    train: Interactions


def held_users(split: Split) -> set[int]:
    """Users the split tests or validates on: never simulated."""
    out: set[int] = set()
    for evalset in (split.test, split.valid):
        if evalset is not None:
            out |= {int(r.user) for r in evalset.requests if r.user is not None}
    return out


def simulate(split: Split, config: ListsConfig, seed: int) -> list[ListGroup]:
    """Every (fold, cut) group of simulated training lists of ``split``."""
    events = ordered_events(split.train, seed, split.timestamps_real)
    relevance = split.params.get("relevance")
    liked = np.ones(len(events), dtype=bool)
    if relevance is not None and split.train.has_ratings:
        liked = events["rating"].to_numpy() >= relevance
    user_of = events["user"].to_numpy()
    bounds = np.searchsorted(user_of, np.arange(split.train.n_users + 1))
    items, pos = events["item"].to_numpy(), events["pos"].to_numpy()
    held = held_users(split)
    first = min(config.cuts)
    users = [u for u in range(split.train.n_users)
             if u not in held and bounds[u + 1] - bounds[u] > first]  # fmt: skip
    rng = np.random.default_rng([seed, 21])
    if config.max_users is not None and config.max_users < len(users):
        users = sorted(rng.choice(users, config.max_users, replace=False).tolist())
    if not users:
        raise ConfigError(f"no training user has more than {first} items to simulate lists from")
    fold_of = dict(zip(users, rng.permutation(len(users)) % config.folds, strict=True))
    groups = []
    for fold in range(config.folds):
        members = [u for u in users if fold_of[u] == fold]
        for cut in config.cuts:
            reqs, truth, cut_users = [], [], []
            for u in members:
                lo, hi = bounds[u], bounds[u + 1]
                if hi - lo <= cut:
                    continue
                later = items[lo + cut : hi][liked[lo + cut : hi]]
                later = np.setdiff1d(later, items[lo : lo + cut])
                if len(later) == 0:
                    continue
                reqs.append(Request(u, items[lo : lo + cut].copy()))
                truth.append(later)
                cut_users.append(u)
            if not reqs:
                continue
            future = np.isin(user_of, cut_users) & (pos >= cut)
            train = split.train.with_frame(events.loc[~future, list(Interactions.COLUMNS)])
            groups.append(ListGroup(fold, cut, reqs, truth, train))
    return groups
