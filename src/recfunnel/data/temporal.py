"""The global temporal protocol: train until a cutoff, predict the window after it.

Production evaluates "train until Monday, predict the week after". One cutoff time holds for
every user: ``train`` is every event strictly before it, so no stage can see an event at or
after the cutoff. Test users are the users with a relevant event in the window
``[cutoff, cutoff + window_days)``; each request's history is that user's events before the
cutoff (none: a **new user**), its truth the relevant window items not already in the
history. Items whose first event is at or after the cutoff are **new items**
(:attr:`~recfunnel.core.types.Split.new_items`): in the catalog, absent from ``train``.

Validation users come from an inner cutoff inside the training period, split the same way
(histories before the inner cutoff, truth in the inner window, which ends at the main
cutoff at the latest), so tuning never looks past the main cutoff.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from pydantic import Field, field_serializer, field_validator

from recfunnel.core.config import Strict
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Dataset, EvalSet, Request, Split

log = logging.getLogger(__name__)

DAY = 86_400.0
"""Seconds per day: event times of the bundled datasets are Unix seconds."""


def _date(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cutoff_time(value: float | str, times: np.ndarray, name: str = "protocol.cutoff") -> float:
    """A cutoff as an event time: a quantile in (0, 1) of ``times``, or an ISO date (UTC when
    it names no zone). Refused unless some events fall before it and some at or after it."""
    if isinstance(value, str):
        try:
            stamp = pd.Timestamp(value)
        except ValueError as exc:
            raise ConfigError(f"{name} = {value!r} is neither a quantile nor an ISO date: "
                              f"{exc}") from None  # fmt: skip
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        cut = stamp.timestamp()
        lo, hi = float(times.min()), float(times.max())
        if not lo < cut <= hi:
            raise ConfigError(
                f"{name} = {value!r} is outside the data's time range ({_date(lo)} to "
                f"{_date(hi)} UTC): no event would fall "
                f"{'before' if cut <= lo else 'at or after'} it"
            )
        return cut
    if isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} must be a quantile strictly between 0 and 1 or an ISO date "
                          f"string, got {value!r}")  # fmt: skip
    cut = float(np.quantile(times, float(value)))
    if not (times < cut).any():
        raise ConfigError(f"{name} = {value!r}: no event falls before that quantile "
                          f"({_date(cut)} UTC); raise it")  # fmt: skip
    return cut


def _window(
    frame: pd.DataFrame, start: float, end: float, relevance: float | None, has_ratings: bool
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Users with a relevant event in ``[start, end)``, their histories (items of events
    before ``start``, oldest first) and truth (relevant window items not in the history)."""
    times = frame["timestamp"].to_numpy()
    inside = (times >= start) & (times < end)
    if relevance is not None and has_ratings:
        inside &= frame["rating"].to_numpy() >= relevance
    before = frame[times < start]
    before = before.iloc[np.lexsort((before["item"].to_numpy(), before["timestamp"].to_numpy(),
                                     before["user"].to_numpy()))]  # fmt: skip
    hist: dict[int, np.ndarray] = {}
    for key, g in before.groupby("user")["item"]:
        hist[int(cast(Any, key))] = g.to_numpy()
    empty = np.empty(0, dtype=np.int64)
    truth: dict[int, np.ndarray] = {}
    for key, g in frame[inside].groupby("user")["item"]:
        u = int(cast(Any, key))
        items = np.setdiff1d(g.to_numpy(), hist.get(u, empty))
        if len(items):
            truth[u] = items
    return np.array(sorted(truth), dtype=np.int64), hist, truth


def _evalset(
    users: np.ndarray, hist: dict[int, np.ndarray], truth: dict[int, np.ndarray]
) -> EvalSet:
    empty = np.empty(0, dtype=np.int64)
    reqs = [Request(user=int(u), history=hist.get(int(u), empty)) for u in users]
    return EvalSet(reqs, [truth[int(u)] for u in users])


def _sample(users: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= len(users):
        return users
    return np.sort(rng.choice(users, n, replace=False))


def temporal(
    data: Dataset,
    *,
    seed: int = 0,
    cutoff: float | str = 0.9,
    window_days: float | None = None,
    relevance: float | None = 4.0,
    n_users: int | None = None,
    n_valid: int = 0,
    valid_cutoff: float | str | None = None,
) -> Split:
    """The global temporal protocol (see the module's docstring).

    ``cutoff``: a quantile of event times in (0, 1) or an ISO date. ``window_days``: the
    window's length (None: to the end of the data). ``relevance``: min rating of a truth
    item (None, or data without ratings: every window item). ``n_users``: a seeded sample
    of the test users (None: all). ``n_valid``: validation users, a seeded sample of those
    with a relevant event in the inner window. ``valid_cutoff``: the inner cutoff, a
    quantile of the training events' times or a date before ``cutoff`` (None: the same
    quantile as ``cutoff`` applied to the training events; for a date cutoff, the share of
    all events before it).
    """
    inter = data.interactions
    if not data.timestamps_real or not inter.has_timestamps:
        raise ConfigError(
            f"protocol temporal needs real event times, and {data.name} has none "
            "(timestamps_real is False: its event order is synthetic or missing); use the "
            "cold-start or leave-last-out protocol"
        )
    if n_users is not None and n_users < 1:
        raise ConfigError(f"protocol.n_users must be >= 1 (or None: all), got {n_users}")
    if n_valid < 0:
        raise ConfigError(f"protocol.n_valid must be >= 0, got {n_valid}")
    if window_days is not None and not window_days > 0:
        raise ConfigError(f"protocol.window_days must be > 0 (or None: to the end), got "
                          f"{window_days}")  # fmt: skip
    f = inter.frame
    times = f["timestamp"].to_numpy()
    cut = cutoff_time(cutoff, times)
    early = times < cut
    train = inter.with_frame(f[early])
    span = np.inf if window_days is None else window_days * DAY
    has_ratings = inter.has_ratings
    users, hist, truth = _window(f, cut, cut + span, relevance, has_ratings)
    if len(users) == 0:
        raise ConfigError(
            f"no user of {data.name} has a relevant event in the window after "
            f"protocol.cutoff ({_date(cut)} UTC): lower the cutoff, widen window_days, or "
            'lower relevance (relevance = "none" counts every event)'
        )
    new_items = np.setdiff1d(np.unique(f.loc[~early, "item"].to_numpy()),
                             np.unique(f.loc[early, "item"].to_numpy()))  # fmt: skip
    test_users = _sample(users, n_users, np.random.default_rng(seed))
    valid = None
    inner: float | None = None
    if n_valid:
        train_times = times[early]
        if valid_cutoff is None:
            q = float(cutoff) if not isinstance(cutoff, str) else float(early.mean())
            inner = float(np.quantile(train_times, q))
        else:
            inner = cutoff_time(valid_cutoff, train_times, "protocol.valid_cutoff")
        if not inner < cut:
            raise ConfigError(f"protocol.valid_cutoff ({_date(inner)} UTC) must fall before "
                              f"protocol.cutoff ({_date(cut)} UTC)")  # fmt: skip
        v_users, v_hist, v_truth = _window(train.frame, inner, min(inner + span, cut),
                                           relevance, has_ratings)  # fmt: skip
        if len(v_users) == 0:
            raise ConfigError(
                f"no user has a relevant event between protocol.valid_cutoff "
                f"({_date(inner)} UTC) and the cutoff: move valid_cutoff"
            )
        picked = _sample(v_users, n_valid, np.random.default_rng([seed, 1]))
        valid = _evalset(picked, v_hist, v_truth)
    test = _evalset(test_users, hist, truth)
    n_new = sum(len(r.history) == 0 for r in test.requests)
    log.info("temporal split at %s UTC: %d train events, %d test users (%d new), %d new items, "
             "%d valid users", _date(cut), len(train), len(test), n_new, len(new_items),
             len(valid) if valid else 0)  # fmt: skip
    params: dict[str, Any] = dict(
        cutoff=cutoff, window_days=window_days, relevance=relevance, n_users=n_users,
        n_valid=n_valid, valid_cutoff=valid_cutoff, cutoff_time=cut, valid_cutoff_time=inner,
    )  # fmt: skip
    return Split(
        protocol="temporal",
        seed=seed,
        train=train,
        test=test,
        valid=valid,
        params=params,
        timestamps_real=True,
        new_items=new_items,
    )


def _none(v: Any) -> Any:
    """TOML has no null: "none" switches a field off; a TOML date becomes its ISO text."""
    if isinstance(v, str) and v.strip().lower() in ("none", "off", "all"):
        return None
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def _check_cutoff(v: float | str | None, name: str) -> float | str | None:
    if v is None:
        return v
    if isinstance(v, str):
        try:
            pd.Timestamp(v)
        except ValueError:
            raise ValueError(f"{name} must be a quantile in (0, 1) or an ISO date, got "
                             f"{v!r}") from None  # fmt: skip
        return v
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be a quantile strictly between 0 and 1 (or an ISO date "
                         f"string), got {v!r}")  # fmt: skip
    return v


class TemporalConfig(Strict):
    """``[protocol] name = "temporal"``: one cutoff for every user (module docstring)."""

    name: Literal["temporal"] = "temporal"
    cutoff: float | str = Field(
        0.9, description="quantile of event times in (0, 1), or an ISO date (UTC): train is "
        "every event strictly before it",
    )  # fmt: skip
    window_days: float | None = Field(
        None, gt=0, description="test window after the cutoff, in days (None: to the end)"
    )
    relevance: float | None = Field(
        4.0, description='min rating of a truth item ("none": every window event counts)'
    )
    n_users: int | None = Field(None, ge=1, description="seeded sample of test users (None: all)")
    n_valid: int = Field(0, ge=0, description="validation users, from the inner cutoff")
    valid_cutoff: float | str | None = Field(
        None, description="inner cutoff: quantile of the training events' times or a date "
        "(None: cutoff's quantile applied to the training events)",
    )  # fmt: skip

    _nones = field_validator("relevance", "window_days", "valid_cutoff", "cutoff",
                             mode="before")(_none)  # fmt: skip

    @field_validator("cutoff", "valid_cutoff")
    @classmethod
    def _cutoffs(cls, v: float | str | None, info: Any) -> float | str | None:
        return _check_cutoff(v, f"protocol.{info.field_name}")

    @field_serializer("relevance", when_used="json")
    def _none_out(self, v: float | None) -> float | str:
        return "none" if v is None else v

    def split(self, data: Dataset, seed: int) -> Split:
        params = self.model_dump()
        params.pop("name")
        return temporal(data, seed=seed, **params)


__all__ = ["TemporalConfig", "cutoff_time", "temporal"]
