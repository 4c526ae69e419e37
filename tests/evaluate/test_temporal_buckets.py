"""The temporal protocol's tables: user-state buckets, new-item figures, recent popularity."""

from __future__ import annotations

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.types import PAD, Catalog, Interactions
from recfunnel.evaluate.buckets import (
    BUCKETS,
    TEMPORAL_BUCKETS,
    bucket_of,
    buckets_for,
    by_history,
    new_item_figures,
)
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve.popularity import PopularityConfig, PopularityRetriever

DAY = 86_400.0


def test_user_state_buckets():
    assert buckets_for("temporal") is TEMPORAL_BUCKETS
    assert buckets_for("cold-start") is BUCKETS and buckets_for("leave-last-out") is BUCKETS
    lengths = np.array([0, 1, 5, 6, 20, 21, 300])
    assert bucket_of(lengths, TEMPORAL_BUCKETS).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert bucket_of(lengths).tolist() == [0, 0, 0, 1, 1, 2, 3]  # today's buckets, unchanged
    per_user = {
        "ndcg@10": np.array([1.0, 0.5, 0.0, 0.2, 0.4, 0.6, 0.8]),
        "new_recall@10": np.array([1.0, np.nan, 0.0, np.nan, np.nan, np.nan, 0.5]),
    }
    table = by_history(per_user, lengths, TEMPORAL_BUCKETS)
    assert list(table) == ["new", "1–5", "6–20", "21+"]
    assert table["new"] == {"n": 1.0, "ndcg@10": 1.0, "new_recall@10": 1.0}
    assert table["1–5"]["ndcg@10"] == 0.25 and table["1–5"]["new_recall@10"] == 0.0
    assert np.isnan(table["6–20"]["new_recall@10"])
    assert table["6–20"]["ndcg@10"] == pytest.approx(0.3)
    assert table["21+"]["new_recall@10"] == 0.5
    assert list(by_history(per_user, lengths)) == ["0–5", "6–20", "21–50", "51+"]


def test_new_item_figures():
    items = np.array([[3, 0, 4, PAD], [1, 2, 5, 4], [0, 1, 2, 3]])
    truth = [np.array([0, 4, 5]), np.array([2]), np.array([3, 5])]
    means, per_user = new_item_figures(items, truth, np.array([3, 4, 5]), 6, ks=(1, 3))
    # new truth: {4, 5}, {}, {3, 5}: 4 of 6 truth pairs
    assert means["new_item_share"] == pytest.approx(4 / 6)
    assert means["new_truth_users"] == 2
    # @1: user 0 ranks 3 (not its truth) -> 0; user 2 ranks 0 -> 0
    # @3: user 0 has 4 of {4, 5} -> .5; user 2 has none of {3, 5} in 0, 1, 2 -> 0
    assert per_user["new_recall@3"][[0, 2]].tolist() == [0.5, 0.0]
    assert np.isnan(per_user["new_recall@3"][1])
    assert means["new_recall@1"] == 0.0 and means["new_recall@3"] == 0.25


def _train() -> tuple[Interactions, Catalog]:
    # item 0: three old events; item 1: two events in the last 10 days; item 2: one
    days = np.array([1, 2, 3, 95, 99, 98])
    users, items = ["a", "b", "c", "a", "b", "c"], np.array([0, 0, 0, 1, 1, 2])
    ratings = np.array([5, 5, 5, 5, 3, 5.0])
    inter = Interactions.build(users, items, 3, rating=ratings, timestamp=days * DAY)
    return inter, Catalog.build([0, 1, 2], ["x", "y", "z"])


def test_recent_popularity_counts_the_last_days_only():
    train, catalog = _train()
    all_time = PopularityRetriever(PopularityConfig()).fit(FitContext(train, catalog))
    assert all_time.counts_.tolist() == [3, 2, 1]
    recent = PopularityRetriever(PopularityConfig(recent_days=10)).fit(FitContext(train, catalog))
    assert recent.counts_.tolist() == [0, 2, 1] and recent.order_.tolist() == [1, 2, 0]
    liked = PopularityConfig(recent_days=10, min_rating=4)
    assert PopularityRetriever(liked).fit(FitContext(train, catalog)).counts_.tolist() == [0, 1, 1]
    untimed = Interactions.build(["a"], np.array([0]), 3)
    with pytest.raises(ConfigError, match="recent_days needs event times"):
        PopularityRetriever(PopularityConfig(recent_days=10)).fit(FitContext(untimed, catalog))
    with pytest.raises(ValueError, match="recent_days"):
        PopularityConfig(recent_days=0)


def test_runner_reports_user_states_and_new_items(shared_data):
    from recfunnel.data import load_dataset
    from recfunnel.evaluate.config import ExperimentConfig
    from recfunnel.evaluate.runner import run_experiment

    data = load_dataset("ml-latest-small", shared_data)
    pipes = [
        {"name": "pop", "stages": [{"kind": "popularity"}]},
        {"name": "recent", "stages": [{"kind": "popularity", "recent_days": 365}]},
    ]
    cfg = ExperimentConfig.model_validate({
        "seeds": 1, "metrics": ["ndcg@10", "recall@10"], "pipelines": pipes,
        "protocol": {"name": "temporal", "cutoff": 0.5},
    })  # fmt: skip
    result = run_experiment(cfg, dataset=data)
    split = cfg.protocol.split(data, 0)
    is_new = np.isin(np.concatenate(split.test.truth), split.new_items)
    run = result.results[0]
    assert run.metrics["new_item_share"] == pytest.approx(is_new.mean())  # .332
    assert run.metrics["new_truth_users"] == 278 and "new_recall@10" in run.metrics
    table = result.to_json()["by_history"]["buckets"]["pop"]
    assert list(table) == ["new", "1–5", "6–20", "21+"]
    assert table["new"]["n"] == 275 and table["21+"]["n"] == 23
    cold = ExperimentConfig.model_validate({
        "seeds": 1, "metrics": ["ndcg@10"], "pipelines": pipes[:1],
        "protocol": {"name": "cold-start", "n_users": 20},
    })  # fmt: skip
    plain = run_experiment(cold, dataset=data)
    assert not any(m.startswith("new_") for m in plain.results[0].metrics)
    assert list(plain.by_history()["buckets"]["pop"]) == ["0–5", "6–20", "21–50", "51+"]
