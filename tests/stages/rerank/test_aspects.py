"""Classical aspect rerankers: each returns a permutation of its input, MMR with λ = 1 and
DPP with θ = 1 keep the input order, more diversity weight shows more genres, and the
fair reranker meets its exposure constraint in every prefix."""

import numpy as np
import pytest

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Catalog, Request
from recfunnel.evaluate.config import parse_experiment as parse_config
from recfunnel.pipeline import builtin_pipeline
from recfunnel.stages.base import FitContext
from recfunnel.stages.rerank.aspects import (
    AspectConfig,
    AspectReranker,
    cosine,
    dpp_order,
    fair_order,
    mmr_order,
)

# 12 items: 0-5 are "Drama" (old), 6-8 "Comedy" (new), 9-11 "Horror" (new)
GENRES = [("Drama",)] * 6 + [("Comedy",)] * 3 + [("Horror",)] * 3
YEARS = [1980] * 6 + [2005] * 6
CAT = Catalog.build(list(range(12)), [f"m{i}" for i in range(12)], genres=GENRES, years=YEARS)


def head(rows):
    items = np.array(rows)
    scores = -np.arange(items.shape[1], dtype=float)[None].repeat(len(items), 0)
    return CandidateBatch(items, scores, "x")


def rerank(method, rows, **kw):
    r = AspectReranker(AspectConfig(kind=method, **kw)).fit(FitContext(None, CAT))
    return r.rerank([Request(None, np.array([], int))] * len(rows), head(rows))


@pytest.mark.parametrize("method", ["mmr", "dpp", "fair"])
def test_every_aspect_reranker_returns_a_permutation(method):
    rng = np.random.default_rng(0)
    rows = [rng.permutation(12) for _ in range(20)]
    out = rerank(method, rows, trade_off=0.3)
    for r, row in enumerate(rows):
        assert sorted(out.items[r].tolist()) == sorted(row.tolist())
    assert "input_pos" not in out.extras  # where items sat is the funnel's to derive


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_relevance_only_keeps_the_input_order(method):
    rows = [np.arange(12), np.arange(12)[::-1]]
    out = rerank(method, rows, trade_off=1.0)
    assert np.array_equal(out.items, np.array(rows))


def genres_in_top(items, k=3):
    return {GENRES[i][0] for i in items[:k]}


@pytest.mark.parametrize("order", [mmr_order, dpp_order])
def test_diversity_weight_brings_other_genres_up(order):
    rel = np.linspace(1, 0, 12)  # the six dramas are the most relevant
    sim = cosine(np.array([[g == "Drama", g == "Comedy", g == "Horror"] for (g,) in GENRES], float))
    relevance_only = order(rel, sim, 1.0)
    diverse = order(rel, sim, 0.3)
    assert genres_in_top(relevance_only) == {"Drama"}
    assert genres_in_top(diverse) == {"Drama", "Comedy", "Horror"}
    assert diverse[0] == 0  # the most relevant item still leads


def test_fair_reranker_meets_its_exposure_constraint_in_every_prefix():
    rel = np.linspace(1, 0, 12)
    group = np.array([0] * 6 + [1] * 6)  # the protected group is all at the bottom
    for target in (None, 0.5, 0.25):
        order = fair_order(rel, group, target)
        p = 0.5 if target is None else target
        assert sorted(order.tolist()) == list(range(12))
        for k in range(1, 13):
            assert (group[order[:k]] == 1).sum() >= np.floor(p * k)
    # no constraint to meet: relevance order
    assert fair_order(rel, np.zeros(12, int), None).tolist() == list(range(12))


def test_fair_reranker_uses_release_year_groups():
    out = rerank("fair", [np.arange(12)], target=0.5)
    new = np.array(YEARS)[out.items[0]] >= 1996
    assert all(new[:k].sum() >= k // 2 for k in range(1, 13))
    assert out.items[0, 0] == 0  # the best item stays first: the constraint allows it


def test_aspect_pipelines_are_built_in_and_checked():
    assert builtin_pipeline("mf+mmr").stages[-1].kind == "mmr"
    with pytest.raises(ConfigError, match="trade_off"):
        parse_config(
            {
                "pipelines": [
                    {"name": "x", "stages": [{"kind": "cf"}, {"kind": "mmr", "trade_off": 2}]}
                ]
            }
        )
    with pytest.raises(ConfigError, match="maxdiv"):
        parse_config({"pipelines": [{"name": "x", "stages": [{"kind": "cf"}, {"kind": "maxdiv"}]}]})
