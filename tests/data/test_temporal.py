"""The global temporal protocol: one cutoff, new users and new items, an inner cutoff for
validation, and refusals that name the field.

The hand-made data below has events on known days (Unix seconds = day × 86,400), so every
train, test, validation, new-user and new-item membership is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data.splits import ProtocolConfig, make_split
from recfunnel.data.temporal import DAY, TemporalConfig, cutoff_time, temporal

# (user, item, rating, day)
EVENTS = [
    ("a", 0, 5, 1), ("a", 1, 5, 2), ("a", 2, 5, 12), ("a", 3, 2, 13),
    ("b", 0, 4, 3), ("b", 1, 3, 4), ("b", 2, 5, 7),
    ("c", 4, 5, 11), ("c", 0, 4, 14),
    ("d", 1, 5, 5), ("d", 5, 1, 15),
    ("e", 2, 4, 6),
]  # fmt: skip
CUT = "1970-01-11"  # day 10
INNER = "1970-01-05"  # day 4


def dataset(timestamps_real: bool = True) -> Dataset:
    users, items, ratings, days = zip(*EVENTS, strict=True)
    inter = Interactions.build(list(users), np.array(items), 6, rating=np.array(ratings, float),
                               timestamp=np.array(days, float) * DAY)  # fmt: skip
    catalog = Catalog.build(list(range(6)), [f"item {i}" for i in range(6)])
    return Dataset("toy", inter, catalog, timestamps_real=timestamps_real)


def by_user(evalset):
    return {int(r.user): (r.history.tolist(), t.tolist())
            for r, t in zip(evalset.requests, evalset.truth, strict=True)}  # fmt: skip


def test_date_cutoff_train_test_new_users_and_items():
    split = temporal(dataset(), cutoff=CUT)
    f = split.train.frame
    assert len(f) == 7  # a0 a1 b0 b1 b2 d1 e2: every event before day 10, nothing else
    assert f["timestamp"].max() == 7 * DAY
    assert split.params["cutoff_time"] == 10 * DAY
    # a: history 0, 1 (oldest first), truth 2 (item 3 rated 2 is not relevant)
    # c: a new user (no event before the cutoff), truth 0 and 4
    # b, e: no event after the cutoff; d: only an irrelevant one
    assert by_user(split.test) == {0: ([0, 1], [2]), 2: ([], [0, 4])}
    assert split.new_items.tolist() == [3, 4, 5]  # first seen on days 13, 11, 15
    assert not np.isin(f["item"], split.new_items).any()
    assert split.valid is None


def test_relevance_none_window_and_quantile():
    split = temporal(dataset(), cutoff=CUT, relevance=None)
    assert by_user(split.test) == {0: ([0, 1], [2, 3]), 2: ([], [0, 4]), 3: ([1], [5])}
    # a 3-day window [day 10, day 13): a's day-12 item, c's day-11 item
    split = temporal(dataset(), cutoff=CUT, window_days=3)
    assert by_user(split.test) == {0: ([0, 1], [2]), 2: ([], [4])}
    times = dataset().interactions.frame["timestamp"].to_numpy()
    split = temporal(dataset(), cutoff=0.5)
    q = np.quantile(times, 0.5)  # day 6.5
    assert split.params["cutoff_time"] == q == 6.5 * DAY
    assert (split.train.frame["timestamp"] < q).all() and len(split.train) == 6
    assert split.new_items.tolist() == [3, 4, 5]


def test_validation_from_the_inner_cutoff():
    split = temporal(dataset(), cutoff=CUT, n_valid=10, valid_cutoff=INNER)
    # inner window [day 4, day 10): b's day-7 item (its day-4 item is at the inner cutoff,
    # so not history, and rated 3: no truth), d's day-5 item, e's day-6 item
    assert by_user(split.valid) == {1: ([0], [2]), 3: ([], [1]), 4: ([], [2])}
    assert split.params["valid_cutoff_time"] == 4 * DAY
    # default: the cutoff's share of events (7 of 12 before day 10) as a quantile of the
    # training events' times
    split = temporal(dataset(), cutoff=CUT, n_valid=10)
    inner = np.quantile(np.array([1, 2, 3, 4, 5, 6, 7]) * DAY, 7 / 12)
    assert split.params["valid_cutoff_time"] == pytest.approx(inner)
    # inner cutoff day 4.5: b's day-4 item is now history
    assert by_user(split.valid) == {1: ([0, 1], [2]), 3: ([], [1]), 4: ([], [2])}
    # n_valid samples, seeded
    one = [temporal(dataset(), cutoff=CUT, n_valid=1, valid_cutoff=INNER, seed=s) for s in (0, 0)]
    assert by_user(one[0].valid) == by_user(one[1].valid) and len(one[0].valid) == 1


def test_n_users_sample_is_seeded():
    a, b = (temporal(dataset(), cutoff=CUT, n_users=1, seed=3) for _ in range(2))
    assert len(a.test) == 1 and by_user(a.test) == by_user(b.test)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"cutoff": 1.0}, "protocol.cutoff must be a quantile"),
        ({"cutoff": 0.0}, "protocol.cutoff must be a quantile"),
        ({"cutoff": "1960-01-01"}, "outside the data's time range"),
        ({"cutoff": "2030-01-01"}, "outside the data's time range"),
        ({"cutoff": "next monday"}, "neither a quantile nor an ISO date"),
        ({"cutoff": CUT, "n_valid": 5, "valid_cutoff": "1970-01-12"}, "protocol.valid_cutoff"),
        ({"cutoff": CUT, "n_valid": 5, "valid_cutoff": 1.5}, "protocol.valid_cutoff"),
        ({"cutoff": "1970-01-16"}, "no user of toy has a relevant event"),
    ],
)
def test_bad_values_name_the_field(params, words):
    with pytest.raises(ConfigError, match=words):
        temporal(dataset(), **params)


def test_refuses_data_without_real_timestamps():
    with pytest.raises(ConfigError, match=r"needs real event times.*timestamps_real"):
        make_split(dataset(timestamps_real=False), "temporal", 0, cutoff=0.5)


def test_config_parses_and_refuses():
    adapter = TypeAdapter(ProtocolConfig)
    cfg = adapter.validate_python({"name": "temporal", "cutoff": 0.8, "relevance": "none"})
    assert isinstance(cfg, TemporalConfig) and cfg.relevance is None
    import datetime as dt

    cfg = adapter.validate_python({"name": "temporal", "cutoff": dt.date(1970, 1, 11)})
    assert cfg.cutoff == "1970-01-11"
    assert by_user(cfg.split(dataset(), 0).test) == by_user(temporal(dataset(), cutoff=CUT).test)
    bad_values = [
        ({"cutoff": 1.2}, "cutoff"),
        ({"cutoff": "soon"}, "cutoff"),
        ({"window_days": 0}, "window_days"),
        ({"n_valid": -1}, "n_valid"),
    ]
    for bad, field in bad_values:
        with pytest.raises(ValidationError, match=field):
            adapter.validate_python({"name": "temporal", **bad})


def test_cutoff_time_range_message_names_dates():
    times = np.array([0.0, DAY])
    with pytest.raises(ConfigError, match=r"1970-01-01 00:00:00 to 1970-01-02 00:00:00 UTC"):
        cutoff_time("1971-01-01", times)
