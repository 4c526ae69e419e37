"""Each diagnostic on a hand-made case."""

import numpy as np
import pytest

from recfunnel.evaluate.diagnostics import (
    cohen_d,
    cost_per_1000,
    discrimination,
    exposure_stats,
    pareto_front,
    position_correlation,
    topk_overlap,
)
from recfunnel.evaluate.stats import bootstrap_ci, holm, paired_test


def test_same_three_items_for_everyone():
    """A reranker that shows the same 3 items to all users: unique@1 = 1..3, Gini near 1."""
    rng = np.random.default_rng(0)
    ranked = np.array(
        [rng.permutation([1, 2, 3]).tolist() + list(range(10, 17)) for _ in range(500)]
    )
    ranked[:, 3:] = np.arange(10, 17)  # and the same filler too
    e = exposure_stats(ranked, n_items=1000)
    assert e["unique@1"] == 3 and e["unique@10"] == 10
    assert e["gini@10"] > 0.98
    assert e["top10_share@10"] == pytest.approx(1.0)


def test_cohen_d_by_hand():
    pos, neg = np.array([2.0, 4.0]), np.array([0.0, 2.0])
    # pooled sd = sqrt((1*2 + 1*2) / 2) = sqrt(2); d = (3 - 1) / sqrt(2)
    assert cohen_d(pos, neg) == pytest.approx(2 / np.sqrt(2))


def test_scores_independent_of_relevance_give_d_near_zero():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(400, 20))
    hits = rng.random((400, 20)) < 0.2
    d = discrimination(scores, hits)
    assert abs(d.cohen_d) < 0.08 and abs(d.auc - 0.5) < 0.03
    assert d.cohen_d_ci[0] < 0 < d.cohen_d_ci[1]


def test_separating_scores_give_large_d_and_auc():
    rng = np.random.default_rng(2)
    hits = rng.random((300, 20)) < 0.2
    scores = rng.normal(size=hits.shape) + 2.0 * hits
    d = discrimination(scores, hits)
    assert d.cohen_d > 1.5 and d.auc > 0.9 and d.cohen_d_ci[0] > 1.0
    assert d.mean_relevant > d.mean_irrelevant


def test_within_user_centering_removes_per_user_offsets():
    hits = np.array([[True, False], [True, False]])
    scores = np.array([[1.0, 0.0], [11.0, 10.0]])  # user 2 is just more confident
    assert discrimination(scores, hits).auc == 1.0
    assert discrimination(scores, hits, within_user=False).auc == 0.75


def test_position_correlation():
    kept = np.tile(np.arange(10), (5, 1))
    assert position_correlation(kept) == pytest.approx(1.0)
    reversed_ = np.tile(np.arange(10)[::-1], (5, 1))
    assert position_correlation(reversed_) == pytest.approx(-1.0)


def test_topk_overlap():
    a = np.array([[1, 2, 3, 4]])
    assert topk_overlap(a, np.array([[4, 3, 2, 1]]), k=4) == 1.0
    assert topk_overlap(a, np.array([[1, 2, 7, 8]]), k=4) == 0.5


def test_paired_test_detects_a_real_difference():
    rng = np.random.default_rng(3)
    base = rng.random(200)
    better = base + 0.1 + rng.normal(0, 0.05, 200)
    t = paired_test(better, base)
    assert t.mean_diff == pytest.approx(0.1, abs=0.02)
    assert t.t_p < 1e-10 and t.wilcoxon_p < 1e-10 and t.effect_size > 1
    assert t.ci_low < t.mean_diff < t.ci_high and t.ci_low > 0
    same = paired_test(base, base)
    assert same.t_p == 1.0 and same.mean_diff == 0.0


def test_holm_by_hand():
    # sorted p: .01 (x3 = .03), .02 (x2 = .04), .04 (x1 = .04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_bootstrap_ci_covers_the_mean():
    v = np.random.default_rng(4).normal(1.0, 1.0, 500)
    lo, hi = bootstrap_ci(v)
    assert lo < 1.0 < hi and hi - lo < 0.3


def test_cost_and_pareto():
    assert cost_per_1000(500, 100, price_prompt=1.0, price_completion=2.0) == pytest.approx(0.7)
    cost = np.array([0.0, 1.0, 2.0, 3.0])
    ndcg = np.array([0.30, 0.25, 0.35, 0.34])
    assert pareto_front(cost, ndcg).tolist() == [0, 2]
