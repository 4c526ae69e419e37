"""The exposure stage: weight 0 keeps the ranker's order, a weight moves less popular items
up, the tuning obeys its stated rule on validation users (and records the trade it made),
and bad settings are refused with their names."""

import numpy as np
import pytest
from pydantic import ValidationError

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Catalog, Interactions, Request
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.pipeline import Funnel, PipelineConfig, Shared
from recfunnel.stages.base import FitContext
from recfunnel.stages.rerank.exposure import ExposureConfig, ExposureReranker, standardise

# item i was interacted with i + 1 times: item 5 is the most popular
CAT = Catalog.build(list(range(6)), [f"m{i}" for i in range(6)])
ITEMS = np.repeat(np.arange(6), np.arange(1, 7))
TRAIN = Interactions.build(np.arange(len(ITEMS)), ITEMS, 6)


def reranker(**kw) -> ExposureReranker:
    return ExposureReranker(ExposureConfig(kind="exposure", **kw)).fit(FitContext(TRAIN, CAT))


def batch(rows, scores) -> CandidateBatch:
    return CandidateBatch(np.array(rows), np.array(scores, dtype=float), "rank:ltr")


def test_weight_zero_keeps_the_input_order():
    head = batch(
        [[5, 4, 3, 2, 1, 0], [0, 2, 4, PAD, PAD, PAD]],
        [[6, 5, 4, 3, 2, 1], [3, 2, 1, -np.inf, -np.inf, -np.inf]],
    )
    out = reranker(weight=0.0).rerank([Request(None, np.array([], int))] * 2, head)
    assert np.array_equal(out.items, head.items)
    assert np.isneginf(out.scores[1, 3:]).all()  # padding stays padding, at the end


def test_a_penalty_moves_the_less_popular_of_close_scores_up():
    head = batch([[5, 0, 4, 1]], [[1.0, 0.99, 0.5, 0.49]])
    r = reranker(weight=1.0)
    out = r.rerank([Request(None, np.array([], int))], head)
    assert out.items[0].tolist() == [0, 5, 1, 4]
    # a large gap in the ranker's scores survives a small weight
    far = batch([[5, 0]], [[10.0, 0.0]])
    assert reranker(weight=0.1).rerank([Request(None, np.array([], int))], far).items[0, 0] == 5


def test_constant_or_missing_scores_fall_back_to_positions():
    z = standardise(np.array([1.0, 1.0, 1.0]))
    assert z[0] > z[1] > z[2] and abs(z.mean()) < 1e-12
    assert np.all(np.diff(standardise(np.array([np.nan, 2.0, 1.0]))) < 0)


def test_an_untuned_weight_is_refused_by_name():
    r = reranker()
    assert r.tunes
    with pytest.raises(RuntimeError, match="tuned on validation users"):
        r.rerank([Request(None, np.array([], int))], batch([[1, 2]], [[1.0, 0.0]]))
    assert not reranker(weight=0.2).tunes


@pytest.mark.parametrize(
    "bad",
    [
        {"grid": [0.0, -0.1]},
        {"metric": "ndgc@10"},
        {"tolerance": -0.01},
        {"weight": -1.0},
        {"top_n": 1},
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValidationError) as e:
        ExposureConfig(kind="exposure", **bad)
    assert next(iter(bad)) in str(e.value)


@pytest.fixture(scope="module")
def tuned(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = cold_start(data, seed=0, n_users=20, n_valid=60)
    config = PipelineConfig.model_validate(
        {
            "name": "t",
            "pool_size": 100,
            "stages": [
                {"kind": "cf", "model": "als", "factors": 16, "iterations": 5},
                {"kind": "popularity"},
                {"kind": "fuse", "method": "rrf"},
                {"kind": "exposure", "top_n": 50, "tolerance": 0.01, "grid": [0.0, 0.25, 0.5, 2.0]},
            ],
        }
    )
    funnel = Funnel(config, 0, Shared()).fit(split.train, data.catalog)
    return funnel, funnel.tune(split), split


def test_tuning_takes_the_largest_weight_within_tolerance_of_the_best(tuned):
    funnel, info, _ = tuned
    got = info["rerank:exposure"]
    grid = {float(w): v for w, v in got["grid"].items()}
    best = max(v["ndcg@10"] for v in grid.values())
    allowed = [w for w, v in grid.items() if v["ndcg@10"] >= best - 0.01]
    stage = funnel.stage("rerank:exposure")
    assert got["weight"] == max(allowed) == stage.weight_
    assert stage.config.weight is None  # the config stays what was asked for
    assert got["n_users"] == 60
    # the penalty is what it claims to be: more weight shows more distinct items
    assert grid[2.0]["unique@10"] > grid[0.0]["unique@10"]


def test_tuning_without_validation_users_names_the_setting(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = cold_start(data, seed=0, n_users=5)  # no validation users
    config = PipelineConfig.model_validate(
        {"name": "t", "stages": [{"kind": "popularity"}, {"kind": "exposure", "top_n": 20}]}
    )
    funnel = Funnel(config, 0, Shared()).fit(split.train, data.catalog)
    with pytest.raises(ConfigError, match=r"exposure.*protocol.n_valid > 0"):
        funnel.tune(split)


def test_the_tuned_stage_ranks_test_users(tuned):
    funnel, _, split = tuned
    trace = funnel.run(split.test.requests, 10)
    assert trace.final is not None and trace.final.items.shape == (20, 10)
    assert (trace.final.items != PAD).all()
