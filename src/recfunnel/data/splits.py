"""Evaluation protocols: who is tested, on what history, against which truth.

Every protocol is seeded and returns a :class:`~recfunnel.types.Split` whose ``train`` never
holds a test target, so no stage can learn from the answers; cold-start and leave-last-out
hold out validation targets too, while the temporal protocol
(:mod:`recfunnel.data.temporal`) takes its validation truth from before its cutoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_serializer, field_validator

from recfunnel.core.config import Strict
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Dataset, EvalSet, Interactions, Request, Split
from recfunnel.data.temporal import TemporalConfig, temporal

log = logging.getLogger(__name__)


def ordered_events(data: Interactions, seed: int, timestamps_real: bool = True) -> pd.DataFrame:
    """Events sorted per user by time (ties by item index), with ``pos`` = position per user.

    Without real timestamps (e.g. Last.fm listening counts) each user's order is a seeded
    shuffle, so "first n items" is a random n items, reproducibly.
    """
    f = data.frame
    key = f["timestamp"].to_numpy()
    if np.isnan(key).any():
        key = (
            np.nan_to_num(key, nan=0.0)
            if timestamps_real
            else np.random.default_rng(seed).random(len(f))
        )
    order = np.lexsort((f["item"].to_numpy(), key, f["user"].to_numpy()))
    out = f.iloc[order].reset_index(drop=True)
    out["pos"] = out.groupby("user").cumcount().to_numpy()
    return out


def _requests(events: pd.DataFrame, users: np.ndarray, upto: pd.Series) -> list[Request]:
    """One request per user, its history = the user's events before position ``upto[user]``."""
    hist = events[events["pos"] < events["user"].map(upto)]
    grouped = dict(tuple(hist.groupby("user")["item"]))
    empty = np.empty(0, dtype=np.int64)
    return [
        Request(user=int(u), history=grouped[u].to_numpy() if u in grouped else empty)
        for u in users
    ]


def _truth(rows: pd.DataFrame, users: np.ndarray) -> list[np.ndarray]:
    grouped = dict(tuple(rows.groupby("user")["item"]))
    return [np.unique(grouped[u].to_numpy()) for u in users]


def cold_start(
    data: Dataset,
    *,
    seed: int = 0,
    n_users: int = 200,
    history: int = 5,
    relevance: float | None = 4.0,
    n_valid: int = 0,
    history_max: int | None = None,
) -> Split:
    """The cold-start diagnosis paper's protocol.

    Sample ``n_users`` test users (all eligible users if fewer) and ``n_valid`` validation
    users; each keeps its first ``history`` items by time as its history, its later items
    with rating >= ``relevance`` are the truth (every later item when the data has no
    ratings or ``relevance`` is None); train = all other users + the sampled users' histories.
    A user is eligible when at least one relevant item follows its history.

    With ``history_max``, each user keeps a seeded, log-uniform number of first items in
    [``history``, ``history_max``] instead, so one split holds cold and warm users (the
    routing study's buckets).
    """
    if history < 0:
        raise ConfigError(f"protocol.history must be >= 0, got {history}")
    if n_users < 0 or n_users + n_valid < 1:  # 0 test users: a split to tune on (serving)
        raise ConfigError(f"protocol.n_users must be >= 1 (or 0 with n_valid >= 1), got "
                          f"n_users {n_users}, n_valid {n_valid}")  # fmt: skip
    if history_max is not None and history_max < history:
        raise ConfigError(f"protocol.history_max ({history_max}) is below history ({history})")
    inter = data.interactions
    events = ordered_events(inter, seed, data.timestamps_real)
    all_users = np.unique(events["user"].to_numpy())
    if history_max is None:
        keep = pd.Series(history, index=all_users)
    else:
        lo, hi = np.log(history + 1), np.log(history_max + 1)
        draw = np.random.default_rng([seed, 7]).uniform(lo, hi, len(all_users))
        keep = pd.Series(np.floor(np.exp(draw) - 1).astype(int).clip(history, history_max),
                         index=all_users)  # fmt: skip
    later = events["pos"].to_numpy() >= events["user"].map(keep).to_numpy()
    relevant = later.copy()
    if relevance is not None and inter.has_ratings:
        relevant &= events["rating"].to_numpy() >= relevance
    eligible = np.unique(events.loc[relevant, "user"].to_numpy())
    if len(eligible) == 0:
        if relevance is not None and inter.has_ratings:
            top = float(np.nanmax(events["rating"].to_numpy())) if len(events) else float("nan")
            why = (f"protocol.relevance = {relevance:g} keeps only later items rated >= "
                   f"{relevance:g} (the highest rating is {top:g}); lower it, or set "
                   f'relevance = "none" to count every later item')  # fmt: skip
        else:
            why = "no user has more items than that: lower protocol.history"
        raise ConfigError(
            f"no user of {data.name} has a relevant item after {history} history items: {why}"
        )
    rng = np.random.default_rng(seed)
    picked = rng.permutation(eligible)
    n_test = min(n_users, len(picked))
    test_users = np.sort(picked[:n_test])
    valid_users = np.sort(picked[n_test : n_test + n_valid])
    held = np.isin(events["user"].to_numpy(), np.concatenate([test_users, valid_users]))
    train = inter.with_frame(events.loc[~(held & later), list(Interactions.COLUMNS)])
    upto = keep.loc[np.concatenate([test_users, valid_users])]

    def evalset(users: np.ndarray) -> EvalSet:
        truth_rows = events[relevant & np.isin(events["user"].to_numpy(), users)]
        return EvalSet(_requests(events, users, upto), _truth(truth_rows, users))

    params: dict[str, Any] = dict(
        n_users=n_users, history=history, relevance=relevance, n_valid=n_valid,
        history_max=history_max,
    )  # fmt: skip
    log.info("cold-start split: %d test users, %d valid users", n_test, len(valid_users))
    return Split(
        protocol="cold-start",
        seed=seed,
        train=train,
        test=evalset(test_users),
        valid=evalset(valid_users) if n_valid else None,
        params=params,
        timestamps_real=data.timestamps_real,
    )


def core_filter(inter: Interactions, core: int) -> Interactions:
    """Keep items with >= ``core`` interactions, then users with >= ``core`` (one pass each,
    as LlamaRec / BERT4Rec's preprocessing does)."""
    if core <= 0:
        return inter
    f = inter.frame
    counts = f["item"].map(f["item"].value_counts())
    f = f[counts >= core]
    counts = f["user"].map(f["user"].value_counts())
    return inter.with_frame(f[counts >= core])


def leave_last_out(
    data: Dataset,
    *,
    seed: int = 0,
    core: int | None = None,
    n_users: int | None = None,
    n_valid: int | None = None,
) -> Split:
    """LlamaRec's protocol: ``core``-core filter, each user's last item (by time, ties by item)
    is the test target and the one before it the validation target; train holds the rest.

    ``core`` defaults to 5, or 0 for datasets published already filtered and split (their
    shipped split is then reproduced exactly). ``n_users`` samples test users (seeded); every
    user loses their last two events from training, sampled or not. Validation users are the
    test users, unless ``n_valid`` samples them apart (seeded, from every eligible user): a
    small test sample (for an expensive LLM stage) then need not starve a ranker that learns
    on validation users. Either way no test target is ever a training event.
    """
    core = (0 if data.prefiltered else 5) if core is None else core
    inter = core_filter(data.interactions, core)
    events = ordered_events(inter, seed, data.timestamps_real)
    sizes = events.groupby("user")["pos"].transform("size").to_numpy()
    users = np.unique(events.loc[sizes >= 3, "user"].to_numpy())
    if len(users) == 0:
        raise ConfigError(f"no user of {data.name} has 3 or more interactions after filtering")
    eligible = users
    if n_users is not None and n_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, n_users, replace=False))
    valid_users = users
    if n_valid is not None:
        rng = np.random.default_rng([seed, 1])  # apart from the test sample's draw
        take = min(n_valid, len(eligible))
        valid_users = np.sort(rng.choice(eligible, take, replace=False))
    pos = events["pos"].to_numpy()
    is_test = pos == sizes - 1
    is_valid = pos == sizes - 2
    held = (is_test | is_valid) & (sizes >= 3)
    train = inter.with_frame(events.loc[~held, list(Interactions.COLUMNS)])
    last = events.groupby("user")["pos"].max()

    def evalset(offset: int, mask: np.ndarray, who: np.ndarray) -> EvalSet:
        rows = events[mask & np.isin(events["user"].to_numpy(), who)]
        targets = dict(zip(rows["user"], rows["item"], strict=True))
        reqs = _requests(events, who, last.loc[who] - offset)
        return EvalSet(reqs, [np.array([targets[u]], dtype=np.int64) for u in who])

    return Split(
        protocol="leave-last-out",
        seed=seed,
        train=train,
        test=evalset(0, is_test, users),
        valid=evalset(1, is_valid, valid_users),
        params=dict(core=core, n_users=n_users) | ({} if n_valid is None else {"n_valid": n_valid}),
        timestamps_real=data.timestamps_real,
    )


PROTOCOLS: dict[str, Callable[..., Split]] = {
    "cold-start": cold_start,
    "leave-last-out": leave_last_out,
    "temporal": temporal,
}


def make_split(data: Dataset, protocol: str, seed: int = 0, **params: Any) -> Split:
    """Run a protocol by name."""
    fn = PROTOCOLS.get(protocol)
    if fn is None:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return fn(data, seed=seed, **params)


# ---- protocols as configs ------------------------------------------------------------
class _Protocol(Strict):
    """A split protocol: ``name`` picks it, the other fields are its parameters."""

    name: str

    def split(self, data: Dataset, seed: int) -> Split:
        params = self.model_dump()
        return make_split(data, params.pop("name"), seed, **params)


class ColdStartConfig(_Protocol):
    name: Literal["cold-start"] = "cold-start"
    n_users: int = Field(200, ge=1, description="Test users sampled per seed (all if fewer).")
    history: int = Field(5, ge=0, description="First items by time each test user keeps.")
    history_max: int | None = Field(
        None,
        ge=0,
        description="If set: each user keeps a seeded log-uniform count in "
        "[history, history_max] (mixed cold and warm users, for routing studies).",
    )
    relevance: float | None = Field(
        4.0,
        description='Min rating of a truth item ("none", or None from Python: every later '
        "item is a truth item).",
    )
    n_valid: int = Field(0, ge=0, description="Validation users, split like test users.")

    @field_validator("relevance", mode="before")
    @classmethod
    def _none(cls, v: Any) -> Any:
        """TOML has no null: ``relevance = "none"`` switches the rating threshold off."""
        if isinstance(v, str) and v.strip().lower() in ("none", "off", "all"):
            return None
        return v

    @field_serializer("relevance", when_used="json")
    def _none_out(self, v: float | None) -> float | str:
        """Written back as ``"none"`` (``recfunnel config`` output parses back the same)."""
        return "none" if v is None else v


class LeaveLastOutConfig(_Protocol):
    name: Literal["leave-last-out"] = "leave-last-out"
    core: int | None = Field(None, ge=0, description="k-core filter (None: 5, 0 if prefiltered)")
    n_users: int | None = Field(None, ge=1, description="Evaluate a seeded sample of users.")
    n_valid: int | None = Field(
        None, ge=1,
        description="Validation users sampled apart from the test users (None: the same users).",
    )  # fmt: skip


ProtocolConfig = Annotated[
    ColdStartConfig | LeaveLastOutConfig | TemporalConfig, Field(discriminator="name")
]
"""``[protocol]`` of an experiment: ``name`` = cold-start, leave-last-out or temporal
(:mod:`recfunnel.data.temporal`)."""
