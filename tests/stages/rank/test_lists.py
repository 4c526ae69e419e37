"""Simulated cold-start training lists: no test or validation user, no label in its own pool.

The learned ranker of ``configs/cold-start-stacked.toml`` trains on lists simulated from
training users. These tests prove the three ways that could leak are closed: a held-out
user giving a list, a list ranked by pools fitted on its own labels, and a guard that
cannot check (it fails closed).
"""

import numpy as np
import pytest

from recfunnel.core.errors import LeakageError
from recfunnel.data import load_dataset
from recfunnel.data.splits import make_split, ordered_events
from recfunnel.pipeline import Funnel, PipelineConfig
from recfunnel.stages.rank import lists as lists_mod
from recfunnel.stages.rank.lists import ListGroup, ListsConfig, held_users, simulate
from recfunnel.stages.rank.ltr import LTRConfig
from recfunnel.stages.retrieve.cf import CFConfig
from recfunnel.stages.retrieve.fuse import FusionConfig
from recfunnel.stages.retrieve.popularity import PopularityConfig

CUTS = ListsConfig(cuts=[1, 3, 5], folds=2)


@pytest.fixture(scope="module")
def data(shared_data):
    return load_dataset("ml-latest-small", shared_data)


@pytest.fixture(scope="module")
def split(data):
    return make_split(data, "cold-start", 0, n_users=100, history=5, n_valid=100)


@pytest.fixture(scope="module")
def groups(split):
    return simulate(split, CUTS, seed=0)


def pairs(inter):
    return set(zip(inter.frame["user"].tolist(), inter.frame["item"].tolist(), strict=True))


def test_no_test_or_validation_user_gives_a_list(split, groups):
    held = held_users(split)
    assert {int(r.user) for r in split.test.requests} <= held
    assert {int(r.user) for r in split.valid.requests} <= held
    simulated = {int(r.user) for g in groups for r in g.requests}
    assert simulated and not simulated & held
    assert {g.cut for g in groups} == {1, 3, 5} and {g.fold for g in groups} == {0, 1}


def test_no_test_users_held_out_event_reaches_a_list_or_its_pools(split, groups):
    held_out = {(int(r.user), int(i)) for r, t in
                zip(split.test.requests, split.test.truth, strict=True) for i in t}  # fmt: skip
    assert held_out
    for g in groups:
        labels = {(int(r.user), int(i)) for r, t in zip(g.requests, g.truth, strict=True)
                  for i in t}  # fmt: skip
        history = {(int(r.user), int(i)) for r in g.requests for i in r.history}
        assert not (labels | history) & held_out
        assert not pairs(g.train) & held_out


def test_each_lists_pools_never_saw_its_labels(split, groups):
    events = ordered_events(split.train, 0, split.timestamps_real)
    for g in groups:
        seen = pairs(g.train)
        for req, truth in zip(g.requests, g.truth, strict=True):
            assert len(req.history) == g.cut
            assert not {(int(req.user), int(i)) for i in truth} & seen  # labels are future
            assert {(int(req.user), int(i)) for i in req.history} <= seen  # the request is not
            mine = events[events["user"] == req.user]
            np.testing.assert_array_equal(req.history, mine["item"].to_numpy()[: g.cut])
        other = {u for u, _ in seen} - {int(r.user) for r in g.requests}
        assert other  # everyone else's events stay in, whole
    train_users = set(split.train.frame["user"].tolist())
    assert all(set(g.train.frame["user"].tolist()) <= train_users for g in groups)


def test_a_list_from_a_held_user_is_refused(data, split, monkeypatch):
    """Plant a validation user in the simulated lists: the ranker fails closed."""
    valid_user = split.valid.requests[0]
    real = simulate

    def leaky(split_, config, seed):
        out = real(split_, config, seed)
        truth = split_.valid.truth[0]
        out.append(ListGroup(0, 5, [valid_user], [truth], split_.train))
        return out

    monkeypatch.setattr(lists_mod, "simulate", leaky)
    monkeypatch.setattr("recfunnel.stages.rank.ltr.simulate", leaky)
    pipe = PipelineConfig(name="leaky", stages=[
        CFConfig(), PopularityConfig(), FusionConfig(),
        LTRConfig(top_n=50, lists=ListsConfig(cuts=[5], folds=2, max_users=40)),
    ])  # fmt: skip
    funnel = Funnel(pipe, seed=0).fit(split.train, data.catalog)
    with pytest.raises(LeakageError, match="held-out users"):
        funnel.tune(split)


def test_the_ranker_learns_from_simulated_lists(data, split):
    pipe = PipelineConfig(name="sim", stages=[
        CFConfig(), PopularityConfig(), FusionConfig(),
        LTRConfig(top_n=50, lists=ListsConfig(cuts=[3, 5], folds=2, max_users=60),
                  search={"num_leaves": [7, 15]}),
    ])  # fmt: skip
    funnel = Funnel(pipe, seed=0).fit(split.train, data.catalog)
    info = funnel.tune(split)["rank:ltr"]
    assert info["source"] == "simulated training lists"
    assert info["train_users"] <= 60 and info["lists"] > info["train_users"]
    assert [t["num_leaves"] for t in info["search"]] == [7, 15]
    assert info["params"]["num_leaves"] in (7, 15)
    chosen = max(info["search"], key=lambda t: t["valid_ndcg@10"])
    assert info["trees"] == chosen["trees"]


def test_lists_config_is_checked():
    with pytest.raises(ValueError, match=">= 1"):
        ListsConfig(cuts=[0, 3])
    assert ListsConfig(cuts=[5, 3, 5]).cuts == [3, 5]
