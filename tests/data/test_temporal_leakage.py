"""No event at or after the temporal cutoff reaches any fitted stage, the learned ranker's
simulated lists included.

``configs/temporal.toml``'s ``ltr`` pipeline (ALS, item-kNN, content, popularity, RRF and
LambdaRank on simulated cold-start lists) is fitted and tuned on a temporal split of the real
ml-latest-small; every training frame any stage is fitted on (the pipeline's own fit and
every refit for the lists, through ``TuneContext.refit_before``) is recorded. The lists are
fewer than the config's (2 cuts × 2 folds instead of 6 × 4, one grid point) to keep the
test short; the code path is the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recfunnel.core.types import Interactions
from recfunnel.data import load_dataset
from recfunnel.evaluate.config import load_experiment
from recfunnel.pipeline import Funnel
from recfunnel.stages.rank import ltr as ltr_mod
from recfunnel.stages.rank.lists import ListsConfig, held_users, simulate

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "temporal.toml"


@pytest.fixture(scope="module")
def data(shared_data):
    return load_dataset("ml-latest-small", shared_data)


@pytest.fixture(scope="module")
def cfg():
    return load_experiment(CONFIG)


@pytest.fixture(scope="module")
def split(cfg, data):
    return cfg.protocol.model_copy(update={"n_valid": 60}).split(data, 0)


def event_times(data):
    f = data.interactions.frame
    return dict(zip(zip(f["user"], f["item"], strict=True), f["timestamp"], strict=True))


def test_the_config_split(cfg, split, data):
    """configs/temporal.toml's split: the figures its header states."""
    full = cfg.protocol.split(data, 0)
    assert len(full.test) == 298 and len(full.valid) == 119
    assert sum(len(r.history) == 0 for r in full.test.requests) == 275
    assert len(full.new_items) == 4157
    assert full.params["cutoff_time"] == np.quantile(data.interactions.frame["timestamp"], 0.5)


def test_validation_looks_no_further_than_the_cutoff(split, data):
    cut, inner = split.params["cutoff_time"], split.params["valid_cutoff_time"]
    assert inner < cut and len(split.valid) == 60
    times = event_times(data)
    for r, t in zip(split.valid.requests, split.valid.truth, strict=True):
        assert all(times[(r.user, i)] < inner for i in r.history)
        assert all(inner <= times[(r.user, i)] < cut for i in t)
    for r, t in zip(split.test.requests, split.test.truth, strict=True):
        assert all(times[(r.user, i)] < cut for i in r.history)
        assert all(times[(r.user, i)] >= cut for i in t)


def test_no_stage_sees_an_event_at_or_after_the_cutoff(cfg, split, data, monkeypatch):
    cut = split.params["cutoff_time"]
    seen: list[Interactions] = []
    groups_seen: list = []
    fit_stages = Funnel._fit_stages

    def spy(self, train, *args, **kwargs):
        seen.append(train)
        return fit_stages(self, train, *args, **kwargs)

    def spy_simulate(split_, config, seed):
        groups = simulate(split_, config, seed)
        groups_seen.extend(groups)
        return groups

    monkeypatch.setattr(Funnel, "_fit_stages", spy)
    monkeypatch.setattr(ltr_mod, "simulate", spy_simulate)
    pipe = next(p for p in cfg.pipelines if p.name == "ltr")
    stages = list(pipe.stages)
    ltr = stages[-1]
    assert ltr.lists is not None  # the config's ranker learns from simulated lists
    stages[-1] = ltr.model_copy(update={
        "lists": ListsConfig(cuts=[3, 5], folds=2),
        "search": {"num_leaves": [7], "min_child_samples": [50]},
    })  # fmt: skip
    funnel = Funnel(pipe.model_copy(update={"stages": stages}), seed=0)
    funnel.fit(split.train, data.catalog)
    info = funnel.tune(split)["rank:ltr"]
    assert info["source"] == "simulated training lists"
    # the pipeline's fit, then one refit per (fold, cut) group of lists
    assert len(seen) == 1 + len(groups_seen) and len(groups_seen) == 4
    for train in seen:
        f = train.frame
        assert len(f) and f["timestamp"].max() < cut
        assert not np.isin(f["item"].to_numpy(), split.new_items).any()
    held = held_users(split)
    assert held == {r.user for r in split.test.requests} | {r.user for r in split.valid.requests}
    train_pairs = set(zip(split.train.frame["user"], split.train.frame["item"], strict=True))
    for g in groups_seen:
        assert g.train.frame["timestamp"].max() < cut
        for r, t in zip(g.requests, g.truth, strict=True):
            assert r.user not in held
            assert all((r.user, i) in train_pairs for i in [*r.history, *t])
    # new users (empty histories) are answered
    new = [r for r in split.test.requests if len(r.history) == 0][:20]
    out = funnel.run(new, 10)
    assert out.final is not None and out.final.items.shape == (20, 10)
