"""Every metric against values computed by hand."""

import math

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.metrics import depth_needed, evaluate, gini, parse_metric

RANKED = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
TRUTH = [np.array([2, 4]), np.array([9])]


def ev(names, ranked=RANKED, truth=TRUTH, **kw):
    return evaluate(ranked, truth, names, 10, **kw).means


def test_accuracy_metrics_by_hand():
    m = ev(["hr@1", "hr@2", "recall@2", "recall@4", "precision@4", "mrr@4", "ndcg@4", "map@4"])
    # user 0 finds items at ranks 2 and 4; user 1 finds nothing
    assert m["hr@1"] == 0.0
    assert m["hr@2"] == 0.5
    assert m["recall@2"] == pytest.approx((1 / 2) / 2)
    assert m["recall@4"] == pytest.approx(1.0 / 2)
    assert m["precision@4"] == pytest.approx((2 / 4) / 2)
    assert m["mrr@4"] == pytest.approx((1 / 2) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@4"] == pytest.approx((dcg / idcg) / 2)
    assert m["map@4"] == pytest.approx(((1 / 2 + 2 / 4) / 2) / 2)


def test_ndcg_perfect_and_ideal_capped_at_k():
    # 3 relevant items, K = 2, both slots hit: the ideal list has only 2 slots
    m = ev(["ndcg@2"], np.array([[7, 8, 9]]), [np.array([7, 8, 9])])
    assert m["ndcg@2"] == pytest.approx(1.0)


def test_per_user_values_returned():
    res = evaluate(RANKED, TRUTH, ["hr@4"], 10)
    np.testing.assert_array_equal(res.per_user["hr@4"], [1.0, 0.0])


def test_beyond_accuracy_by_hand():
    m = ev(["unique@2", "coverage@2", "gini@2", "top10share@2"])
    assert m["unique@2"] == 4  # items 1, 2, 5, 6
    assert m["coverage@2"] == pytest.approx(0.4)
    # counts over 10 items: six 0s, four 1s -> sum((2i - 11) x_i) / (10 * 4) = 24 / 40
    assert m["gini@2"] == pytest.approx(0.6)
    assert m["top10share@2"] == pytest.approx(1.0)


def test_same_three_items_for_everyone_is_concentrated():
    ranked = np.tile([1, 2, 3], (50, 1))
    truth = [np.array([4])] * 50
    m = evaluate(ranked, truth, ["unique@1", "unique@3", "gini@3"], 1000).means
    assert m["unique@1"] == 1 and m["unique@3"] == 3
    assert m["gini@3"] > 0.99


def test_gini_extremes():
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.zeros(4)) == 0.0


def test_novelty_by_hand():
    counts = np.zeros(10)
    counts[1], counts[2] = 4, 1  # of 4 training users: p = 1 (0 bits), p = 1/4 (2 bits)
    m = ev(["novelty@2"], np.array([[1, 2]]), [np.array([3])], item_counts=counts, n_train_users=4)
    assert m["novelty@2"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="novelty"):
        ev(["novelty@2"])


def test_padding_is_never_a_hit():
    ranked = np.array([[3, -1, -1]])
    m = ev(["hr@3", "precision@3", "recall@3"], ranked, [np.array([3])])
    assert m == {"hr@3": 1.0, "precision@3": pytest.approx(1 / 3), "recall@3": 1.0}


def test_short_ranking_reads_what_exists():
    m = ev(["recall@200", "ndcg@200"], np.array([[1, 2]]), [np.array([2, 5])])
    assert m["recall@200"] == pytest.approx(0.5)
    assert m["ndcg@200"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


@pytest.mark.parametrize("bad", ["foo@10", "ndcg", "ndcg@0", "ndcg@x", ""])
def test_bad_metric_names(bad):
    with pytest.raises(ConfigError):
        parse_metric(bad)


def test_names_and_depth():
    assert parse_metric("NDCG@10") == ("ndcg", 10)
    assert depth_needed(["hr@10", "recall@200"]) == 200


def test_users_without_truth_are_rejected():
    with pytest.raises(ValueError, match="no relevant item"):
        evaluate(RANKED, [np.array([2]), np.array([], dtype=np.int64)], ["hr@2"], 10)


# ---- beyond-accuracy metrics of LLM4Rerank's protocol, by hand ----------------------
# items 0,1: genre A; 2: genre B; 3: genres A+B; 4: no genre
G = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
GROUP = np.array([0, 0, 1, 1, 0])


def aspect(ranked, names):
    ranked = np.array(ranked)
    truth = [np.array([0])] * len(ranked)
    return evaluate(ranked, truth, names, 5, item_genres=G, item_groups=GROUP)


def test_alpha_ndcg_by_hand():
    # list [0, 1, 2]: gains A=1 (pos 1), A again = 0.5 (pos 2), B = 1 (pos 3)
    dcg = 1 / np.log2(2) + 0.5 / np.log2(3) + 1 / np.log2(4)
    # greedy ideal of the same items: 0 (A), 2 (B), 1 (A again: 0.5)
    ideal = 1 / np.log2(2) + 1 / np.log2(3) + 0.5 / np.log2(4)
    got = aspect([[0, 1, 2]], ["alpha_ndcg@3"]).means["alpha_ndcg@3"]
    assert got == pytest.approx(dcg / ideal)
    assert aspect([[0, 2, 1]], ["alpha_ndcg@3"]).means["alpha_ndcg@3"] == pytest.approx(1.0)


def test_ild_and_genre_coverage_by_hand():
    # pairs of [0, 2, 3]: (0,2) distance 1, (0,3) 1 - 1/√2, (2,3) 1 - 1/√2
    ild = (1 + 2 * (1 - 1 / np.sqrt(2))) / 3
    r = aspect([[0, 2, 3], [0, 1, 4]], ["ild@3", "genre_coverage@3"])
    assert r.per_user["ild@3"][0] == pytest.approx(ild)
    assert r.per_user["ild@3"][1] == pytest.approx((0 + 1 + 1) / 3)  # item 4 has no genre
    assert r.per_user["genre_coverage@3"].tolist() == [1.0, 0.5]


def test_mad_by_hand():
    # positions of a 4-list map to 1, 2/3, 1/3, 0; group 1 = items 2, 3
    r = aspect([[2, 0, 3, 1], [0, 1, 4, 4]], ["mad@4"])
    assert r.per_user["mad@4"][0] == pytest.approx(abs((1 + 1 / 3) / 2 - (2 / 3 + 0) / 2))
    assert np.isnan(r.per_user["mad@4"][1])  # one group only: undefined, left out of the mean
    assert r.means["mad@4"] == pytest.approx(r.per_user["mad@4"][0])
    assert parse_metric("mad") == ("mad", 20)


def test_diversity_metrics_need_item_features():
    with pytest.raises(ConfigError, match="item genres"):
        evaluate(np.array([[0, 1]]), [np.array([0])], ["ild@2"], 5)
