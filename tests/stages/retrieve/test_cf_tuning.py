"""A cf grid is chosen on validation users only, as an independent search would choose it,
and through the funnel's tuning step; on real data (ml-latest-small cold-start)."""

import numpy as np
import pytest

from recfunnel.core.metrics import evaluate
from recfunnel.core.types import EvalSet, Request, Split
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.pipeline import Funnel, PipelineConfig
from recfunnel.stages.base import FitContext, TuneContext
from recfunnel.stages.retrieve.cf import CFConfig, CFRetriever

GRID = {"model": "rp3beta", "rp3_alpha": [0.5, 1.0], "rp3_beta": 0.0, "min_rating": ["all", 4.0]}


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = cold_start(data, seed=0, n_users=40, n_valid=60, history=5)
    return data, split


def context(split: Split, catalog) -> TuneContext:
    def never(*args, **kwargs):
        raise AssertionError("a retriever's tuning runs no earlier stage")

    return TuneContext(split, catalog, 0, never, never)


def test_the_grid_is_chosen_on_validation_users_as_an_independent_search(setup):
    data, split = setup
    assert split.valid is not None
    r = CFRetriever(CFConfig.model_validate(GRID)).fit(FitContext(split.train, data.catalog))
    assert r.tunes
    info = r.tune(split.valid, context(split, data.catalog))
    by_hand = []
    for point in CFConfig.model_validate(GRID).grid():
        one = CFRetriever(CFConfig(model="rp3beta", **point))
        one.fit(FitContext(split.train, data.catalog))
        got = one.retrieve(split.valid.requests, 10).items
        by_hand.append(evaluate(got, split.valid.truth, ["ndcg@10"],
                                data.catalog.n_items).means["ndcg@10"])  # fmt: skip
    np.testing.assert_allclose([t["ndcg@10"] for t in info["grid"]], by_hand)
    best = int(np.argmax(by_hand))
    assert info["chosen"] == CFConfig.model_validate(GRID).grid()[best] == r.params_
    assert info["n_users"] == len(split.valid)
    # the fitted stage now answers with the chosen point
    chosen = CFRetriever(CFConfig(model="rp3beta", **r.params_))
    chosen.fit(FitContext(split.train, data.catalog))
    np.testing.assert_array_equal(r.retrieve(split.test.requests, 20).items,
                                  chosen.retrieve(split.test.requests, 20).items)  # fmt: skip


def test_tuning_never_reads_a_test_user(setup, monkeypatch):
    data, split = setup
    assert split.valid is not None
    seen: list[Request] = []
    answer = CFRetriever._answer

    def spy(self, model, requests, k):
        seen.extend(requests)
        return answer(self, model, requests, k)

    r = CFRetriever(CFConfig.model_validate(GRID)).fit(FitContext(split.train, data.catalog))
    monkeypatch.setattr(CFRetriever, "_answer", spy)
    # test users whose truth is the opposite of anything useful: the choice must not move
    poisoned = Split(split.protocol, split.seed, split.train,
                     EvalSet(split.test.requests, [np.array([0]) for _ in split.test.truth]),
                     split.valid)  # fmt: skip
    info = r.tune(split.valid, context(poisoned, data.catalog))
    valid_ids = {id(q) for q in split.valid.requests}
    assert seen and all(id(q) in valid_ids for q in seen)
    other = CFRetriever(CFConfig.model_validate(GRID)).fit(FitContext(split.train, data.catalog))
    assert other.tune(split.valid, context(split, data.catalog))["chosen"] == info["chosen"]


def test_the_funnel_tunes_a_cf_grid_and_records_it(setup):
    data, split = setup
    config = PipelineConfig.model_validate({"name": "rp3", "stages": [
        {"kind": "cf", "model": "rp3beta", "rp3_alpha": [0.5, 1.0], "min_rating": ["all", 4.0]}
    ]})  # fmt: skip
    funnel = Funnel(config, 0).fit(split.train, data.catalog)
    tuned = funnel.tune(split)
    info = tuned["retrieve:cf"]
    assert len(info["grid"]) == 4 and info["chosen"] == funnel.stages_[0].params_
    assert funnel.stages_[0].config.rp3_alpha == [0.5, 1.0]  # the config is what was asked
    # a shared stage asked again on the same users answers from its record
    assert funnel.stages_[0].tune(split.valid, context(split, data.catalog)) is info


def test_single_values_tune_nothing():
    assert not CFRetriever(CFConfig(model="ease", ease_lambda=[300.0])).tunes
    assert not CFRetriever(CFConfig(model="als")).tunes
    assert CFRetriever(CFConfig(model="als", min_rating=["all", 4.0])).tunes
