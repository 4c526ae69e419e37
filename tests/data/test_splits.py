"""Protocol invariants: no truth in train, histories as specified, seeds reproduce."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start, leave_last_out, make_split


@pytest.fixture(scope="module")
def ml(shared_data):
    return load_dataset("ml-latest-small", shared_data)


def pairs(inter: Interactions) -> set[tuple[int, int]]:
    f = inter.frame
    return set(zip(f["user"].tolist(), f["item"].tolist(), strict=True))


def tiny() -> Dataset:
    """3 users; user 0 rates items 0..5 at times 5..0 (reverse order), with ties."""
    cat = Catalog.build(list(range(8)), [f"m{i}" for i in range(8)])
    rows = [
        (0, 0, 5.0, 50), (0, 1, 4.0, 40), (0, 2, 2.0, 30), (0, 3, 5.0, 20), (0, 4, 1.0, 10),
        (0, 5, 4.0, 10),
        (1, 0, 4.0, 1), (1, 1, 4.0, 2), (1, 2, 4.0, 3), (1, 6, 4.0, 4),
        (2, 7, 1.0, 1), (2, 6, 1.0, 2),
    ]  # fmt: skip
    f = pd.DataFrame(rows, columns=["u", "i", "r", "t"])
    inter = Interactions.build(f.u.to_numpy(), f.i.to_numpy(), 8, f.r.to_numpy(), f.t.to_numpy())
    return Dataset("tiny", inter, cat)


def test_cold_start_by_hand():
    s = cold_start(tiny(), seed=0, n_users=10, history=2, relevance=4.0)
    # user 2 has no rating >= 4 after its history: not eligible
    assert [r.user for r in s.test.requests] == [0, 1]
    # user 0 by time: items 4 (t10), 5 (t10, tie -> lower item first), 3, 2, 1, 0
    np.testing.assert_array_equal(s.test.requests[0].history, [4, 5])
    np.testing.assert_array_equal(s.test.truth[0], [0, 1, 3])  # item 2 is rated 2
    np.testing.assert_array_equal(s.test.requests[1].history, [0, 1])
    np.testing.assert_array_equal(s.test.truth[1], [2, 6])
    assert pairs(s.train) == {(0, 4), (0, 5), (1, 0), (1, 1), (2, 7), (2, 6)}


def test_cold_start_invariants(ml):
    s = cold_start(ml, seed=3, n_users=200, history=5)
    assert len(s.test) == 200
    train = pairs(s.train)
    f = ml.interactions.frame
    for req, truth in zip(s.test.requests, s.test.truth, strict=True):
        assert len(req.history) == 5 and len(truth) >= 1
        assert not any((req.user, int(t)) in train for t in truth)  # no truth leaks into train
        assert all((req.user, int(h)) in train for h in req.history)
        user_rows = f[f.user == req.user].sort_values(["timestamp", "item"])
        np.testing.assert_array_equal(req.history, user_rows.item.to_numpy()[:5])
        later = user_rows.iloc[5:]
        np.testing.assert_array_equal(truth, np.sort(later.item[later.rating >= 4].to_numpy()))
        # the test user's later events are all out of train, relevant or not
        assert s.train.frame.user.eq(req.user).sum() == 5
    # other users keep everything
    others = ~f.user.isin([r.user for r in s.test.requests])
    assert len(s.train) == others.sum() + 200 * 5


def test_cold_start_seeds(ml):
    a = cold_start(ml, seed=1, n_users=50)
    b = cold_start(ml, seed=1, n_users=50)
    c = cold_start(ml, seed=2, n_users=50)
    users = [r.user for r in a.test.requests]
    assert users == [r.user for r in b.test.requests]
    assert users != [r.user for r in c.test.requests]
    assert all(np.array_equal(x, y) for x, y in zip(a.test.truth, b.test.truth, strict=True))


def test_cold_start_history_zero_and_all_users(ml):
    s = cold_start(ml, seed=0, n_users=10_000, history=0)
    assert all(len(r.history) == 0 for r in s.test.requests)
    assert len(s.test) <= ml.interactions.n_users and len(s.test) > 600 - 20


def test_cold_start_validation_users_disjoint(ml):
    s = cold_start(ml, seed=0, n_users=100, n_valid=50)
    assert s.valid is not None and len(s.valid) == 50
    test_users = {r.user for r in s.test.requests}
    assert test_users.isdisjoint(r.user for r in s.valid.requests)
    train = pairs(s.train)
    for req, truth in zip(s.valid.requests, s.valid.truth, strict=True):
        assert not any((req.user, int(t)) in train for t in truth)


def test_cold_start_without_ratings_uses_all_later_items():
    d = tiny()
    f = d.interactions.frame.assign(rating=np.nan)
    s = cold_start(Dataset("x", d.interactions.with_frame(f), d.catalog), n_users=5, history=2)
    assert [r.user for r in s.test.requests] == [0, 1]
    np.testing.assert_array_equal(s.test.truth[0], [0, 1, 2, 3])


def test_cold_start_shuffles_order_without_timestamps():
    d = tiny()
    f = d.interactions.frame.assign(timestamp=np.nan)
    data = Dataset("x", d.interactions.with_frame(f), d.catalog, timestamps_real=False)
    hists = {
        tuple(
            cold_start(data, seed=s, n_users=5, history=3, relevance=None).test.requests[0].history
        )
        for s in range(8)
    }
    assert len(hists) > 1  # a seeded shuffle, not a fixed order
    again = cold_start(data, seed=4, n_users=5, history=3, relevance=None)
    assert tuple(again.test.requests[0].history) in hists


def test_leave_last_out_matches_llamarec(ml):
    s = leave_last_out(ml, seed=0)
    assert len(s.test) == 610
    assert s.train.frame.item.nunique() <= 3650
    assert s.params["core"] == 5
    train = pairs(s.train)
    assert s.valid is not None
    for req, t, vreq, v in zip(
        s.test.requests, s.test.truth, s.valid.requests, s.valid.truth, strict=True
    ):
        assert req.user == vreq.user
        assert (req.user, int(t[0])) not in train and (req.user, int(v[0])) not in train
        np.testing.assert_array_equal(req.history, np.append(vreq.history, v))
        assert all((req.user, int(h)) in train for h in vreq.history)


def test_leave_last_out_by_hand():
    s = leave_last_out(tiny(), core=0)
    # user 0 by time: 4, 5, 3, 2, 1, 0 -> test 0, valid 1
    assert [r.user for r in s.test.requests] == [0, 1]
    assert s.test.truth[0].tolist() == [0] and s.valid.truth[0].tolist() == [1]
    np.testing.assert_array_equal(s.test.requests[0].history, [4, 5, 3, 2, 1])
    assert s.test.truth[1].tolist() == [6] and s.valid.truth[1].tolist() == [2]
    assert pairs(s.train) == {(0, 4), (0, 5), (0, 3), (0, 2), (1, 0), (1, 1), (2, 7), (2, 6)}


def test_leave_last_out_user_sample(ml):
    a = leave_last_out(ml, seed=0, n_users=40)
    b = leave_last_out(ml, seed=1, n_users=40)
    assert len(a.test) == 40
    assert [r.user for r in a.test.requests] != [r.user for r in b.test.requests]
    assert len(a.train) == len(leave_last_out(ml, seed=0).train)  # training keeps everyone


def test_leave_last_out_samples_validation_users_apart(ml):
    """A small test sample with many validation users (a ranker's lists): the sets are
    drawn apart, the test users are the same as without ``n_valid``, and no test target is
    a training event or a validation target's history."""
    a = leave_last_out(ml, seed=0, n_users=40, n_valid=300)
    plain = leave_last_out(ml, seed=0, n_users=40)
    assert [r.user for r in a.test.requests] == [r.user for r in plain.test.requests]
    assert a.valid is not None and len(a.valid) == 300
    assert {r.user for r in a.valid.requests} != {r.user for r in a.test.requests}
    assert len(a.train) == len(plain.train)
    train = pairs(a.train)
    targets = {(r.user, int(t[0])) for r, t in zip(a.test.requests, a.test.truth, strict=True)}
    assert not targets & train
    for vreq, v in zip(a.valid.requests, a.valid.truth, strict=True):
        assert (vreq.user, int(v[0])) not in train
        assert not {(vreq.user, int(h)) for h in vreq.history} & targets
    assert a.params["n_valid"] == 300 and "n_valid" not in plain.params
    # more validation users than there are: all of them
    assert len(leave_last_out(ml, seed=0, n_users=40, n_valid=10_000).valid) == 610


def test_bad_protocol_values(ml):
    with pytest.raises(ConfigError, match="unknown protocol"):
        make_split(ml, "leave-one-in")
    with pytest.raises(ConfigError, match="history"):
        cold_start(ml, history=-1)
    with pytest.raises(ConfigError, match="relevant item"):
        cold_start(ml, history=10_000)
