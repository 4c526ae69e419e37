"""The learned ranker: features line up, it learns, and it never learns from test targets."""

import dataclasses

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.metrics import evaluate
from recfunnel.data import load_dataset
from recfunnel.data.splits import leave_last_out
from recfunnel.pipeline import Funnel, PipelineConfig
from recfunnel.stages.rank.ltr import LeakageError, LTRConfig
from recfunnel.stages.retrieve.cf import CFConfig
from recfunnel.stages.retrieve.content import ContentConfig
from recfunnel.stages.retrieve.fuse import FusionConfig
from recfunnel.stages.retrieve.popularity import PopularityConfig

HYBRID = [CFConfig(), ContentConfig(), PopularityConfig(), FusionConfig()]


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    return data, leave_last_out(data, seed=0)


def pipeline(**rank):
    ltr = LTRConfig(top_n=50, n_estimators=100, **rank)
    return PipelineConfig(name="hybrid+ltr", stages=[*HYBRID, ltr], pool_size=200)


@pytest.fixture(scope="module")
def fitted(setup):
    data, split = setup
    f = Funnel(pipeline(), seed=0).fit(split.train, data.catalog)
    f.tune(split)
    return f


def ranker(funnel):
    return funnel.stages_[-1]


def test_features_are_aligned_with_candidates(fitted, setup):
    _, split = setup
    reqs = split.test.requests[:5]
    before = fitted._run(fitted.stages_, fitted.names_, reqs, 200, 0, len(fitted.stages_) - 1)
    head = before.head(50)
    x = ranker(fitted).features(reqs, before)
    names = ranker(fitted).feature_names(before)
    assert x.shape == (5, 50, len(names))
    col = {n: i for i, n in enumerate(names)}
    # the popularity pool's rank of a candidate is where that pool listed it
    pop = before.batches["retrieve:popularity"]
    item = head.items[0, 3]
    where = np.flatnonzero(pop.items[0] == item)
    expected = where[0] if len(where) else pop.depth
    assert x[0, 3, col["retrieve:popularity:rank"]] == expected
    assert x[0, 3, col["history_len"]] == len(reqs[0].history)
    counts = split.train.item_counts()
    assert x[0, 3, col["log_popularity"]] == pytest.approx(np.log1p(counts[item]))
    assert (x[..., col["genre_overlap"]] >= 0).all() and (x[..., col["genre_overlap"]] <= 1).all()


def test_ranker_learns_and_exposes_importances(fitted, setup):
    data, split = setup
    res = fitted.run(split.test.requests, 50)
    ranked, fused = res.final.items, res.batches["fuse:rrf"].items
    for a, b in zip(ranked[:, :50], fused[:, :50], strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())  # reorders its head, loses nothing
    info = fitted.tuned_["rank:ltr"]
    imp = info["importance"]
    assert sum(imp.values()) == pytest.approx(1.0) and max(imp.values()) < 1.0
    assert info["train_users"] > 100
    n = data.catalog.n_items
    m = ["ndcg@10"]
    ltr = evaluate(ranked, split.test.truth, m, n).means["ndcg@10"]
    rrf = evaluate(fused[:, :50], split.test.truth, m, n).means["ndcg@10"]
    assert ltr > rrf  # learned on validation targets, it beats the fused order on test


def test_a_planted_leak_fails(setup):
    """Training the ranker on the test targets (a leak) is refused, naming the user."""
    data, split = setup
    f = Funnel(pipeline(), seed=0).fit(split.train, data.catalog)
    with pytest.raises(LeakageError, match="test targets"):
        f.tune(dataclasses.replace(split, valid=split.test))


def test_validation_and_test_labels_never_overlap(setup):
    _, split = setup
    for v, t in zip(split.valid.truth, split.test.truth, strict=True):
        assert not set(v.tolist()) & set(t.tolist())


def test_ranker_needs_training(setup):
    data, split = setup
    f = Funnel(pipeline(), seed=0).fit(split.train, data.catalog)
    with pytest.raises(RuntimeError, match="not trained"):
        f.run(split.test.requests[:2], 10)
    with pytest.raises(ConfigError, match="validation"):
        f.tune(dataclasses.replace(split, valid=None))


def test_early_stopping_trains_fewer_trees_on_held_out_validation_users(setup):
    """With ``holdout`` a share of validation users picks the number of trees; the model is
    then refit on every validation user with that many trees, deterministically."""
    data, split = setup
    cfg = pipeline(holdout=0.3, patience=5)
    runs = []
    for _ in range(2):
        f = Funnel(cfg, seed=0).fit(split.train, data.catalog)
        f.tune(split)
        runs.append(f)
    trees = runs[0].tuned_["rank:ltr"]["trees"]
    assert 1 <= trees < 100 and runs[1].tuned_["rank:ltr"]["trees"] == trees
    assert ranker(runs[0]).model_.n_estimators == trees
    assert runs[0].tuned_["rank:ltr"]["train_users"] > 100  # refit on all, not on the 70%
