"""EASE and RP3β by hand: closed forms on 4-item examples, the refusal of an EASE too
large to hold, liked-events training (``min_rating``) and unknown or empty histories."""

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.core.candidates import PAD
from recfunnel.core.errors import ConfigError
from recfunnel.core.types import Catalog, Interactions, Request
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve.cf import CFConfig, CFRetriever
from recfunnel.stages.retrieve.item_models import (
    ease_bytes,
    ease_weights,
    human_bytes,
    rp3beta_weights,
)


def tiny(rows: list[list[int]], n_items: int, ratings: list[list[float]] | None = None):
    """Interactions and a catalog from per-user item lists (and ratings)."""
    users = [u for u, r in enumerate(rows) for _ in r]
    items = np.array([i for r in rows for i in r])
    rating = None if ratings is None else np.array([x for r in ratings for x in r])
    train = Interactions.build(users, items, n_items, rating=rating)
    catalog = Catalog.build(list(range(n_items)), [f"item {i}" for i in range(n_items)])
    return train, catalog


def binary(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    x = np.zeros((len(rows), n_items))
    for u, r in enumerate(rows):
        x[u, r] = 1.0
    return sp.csr_matrix(x)


def fitted(config: CFConfig, train, catalog) -> CFRetriever:
    return CFRetriever(config).fit(FitContext(train, catalog))


# ---- EASE -----------------------------------------------------------------------------
# items {0, 1} and {2, 3} never share a user, so XᵀX + λI is two 2 × 2 blocks, each
# inverted by hand: [[a, b], [b, d]]⁻¹ = [[d, −b], [−b, a]] / (ad − b²).
BLOCKS = [[0, 1], [0, 1], [0], [2, 3], [3]]


def test_ease_by_hand_on_two_blocks():
    lam = 1.0
    # block {0, 1}: G + λI = [[4, 2], [2, 3]], det 8, P = [[3, −2], [−2, 4]] / 8
    # B_01 = −P_01 / P_11 = (2/8) / (4/8) = 1/2;  B_10 = −P_10 / P_00 = (2/8) / (3/8) = 2/3
    # block {2, 3}: G + λI = [[2, 1], [1, 3]], det 5, P = [[3, −1], [−1, 2]] / 5
    # B_23 = (1/5) / (2/5) = 1/2;  B_32 = (1/5) / (3/5) = 1/3
    hand = np.array([[0, 1 / 2, 0, 0], [2 / 3, 0, 0, 0], [0, 0, 0, 1 / 2], [0, 0, 1 / 3, 0]])
    np.testing.assert_allclose(ease_weights(binary(BLOCKS, 4), lam), hand, atol=1e-7)


def test_ease_equals_the_ridge_regression_of_each_column():
    """Steck's closed form against the problem it solves, column by column: item j's
    column regressed on every other item's, with L2 weight λ (np.linalg.solve)."""
    rows = [[0, 1, 2], [0, 2], [1, 3], [0, 1, 3], [2, 3], [0], [1, 2, 3]]
    x = binary(rows, 4).toarray()
    lam = 0.7
    g = x.T @ x
    b = ease_weights(sp.csr_matrix(x), lam)
    for j in range(4):
        rest = [i for i in range(4) if i != j]
        coef = np.linalg.solve(g[np.ix_(rest, rest)] + lam * np.eye(3), g[rest, j])
        np.testing.assert_allclose(b[rest, j], coef, rtol=1e-5)
        assert b[j, j] == 0.0


def test_ease_retriever_scores_history_times_b():
    train, catalog = tiny(BLOCKS, 4)
    r = fitted(CFConfig(model="ease", ease_lambda=1.0), train, catalog)
    out = r.retrieve([Request(None, [0]), Request(None, [3]), Request(None, [0, 3])], 3)
    # [0] → B row 0: item 1 (1/2), then 0-score ties by popularity (3 has 2 events, 2 has 1)
    assert out.items[0].tolist() == [1, 3, 2]
    np.testing.assert_allclose(out.scores[0], [1 / 2, 0, 0], atol=1e-7)
    # [3] → B row 3: item 2 (1/3), then 0 (3 events) and 1 (2 events)
    assert out.items[1].tolist() == [2, 0, 1]
    np.testing.assert_allclose(out.scores[1], [1 / 3, 0, 0], atol=1e-7)
    # [0, 3] → rows 0 + 3: 1 (1/2), 2 (1/3); only two items are left
    assert out.items[2].tolist() == [1, 2, PAD]
    assert not out.fallback.any()


def test_an_ease_too_large_is_refused_naming_size_memory_and_alternatives():
    train, catalog = tiny(BLOCKS, 4)
    with pytest.raises(ConfigError) as err:
        fitted(CFConfig(model="ease", ease_max_items=3), train, catalog)
    msg = str(err.value)
    assert "4 items" in msg and "128 B" in msg and "items² × 8 bytes" in msg
    assert "rp3beta" in msg and "itemknn" in msg and "ease_max_items = 3" in msg
    # Amazon Video Games' 16,859 items: the figure the issue quotes
    assert human_bytes(ease_bytes(16_859)) == "2.3 GB"


# ---- RP3β -----------------------------------------------------------------------------
GRAPH = [[0, 1], [1, 2], [1, 2, 3]]  # user degrees 2, 2, 3; item degrees 1, 3, 2, 1


def test_rp3beta_by_hand_alpha_one():
    """α = 1: W_ij = Σ_u (1/deg_i)(1/deg_u) / deg_j^β, summed by hand over shared users."""
    r3, r2 = np.sqrt(3), np.sqrt(2)
    hand = np.array([
        [0, (1 / 2) / r3, 0, 0],                               # 0 → u0 → 1
        [(1 / 3) * (1 / 2), 0, ((1 / 6) + (1 / 9)) / r2, 1 / 9],  # 1 → u0, u1, u2
        [0, ((1 / 4) + (1 / 6)) / r3, 0, (1 / 2) * (1 / 3)],   # 2 → u1, u2
        [0, (1 / 3) / r3, (1 / 3) / r2, 0],                    # 3 → u2
    ])  # fmt: skip
    w = rp3beta_weights(binary(GRAPH, 4), 1.0, 0.5, 10).toarray()
    np.testing.assert_allclose(w, hand, rtol=1e-12)


def test_rp3beta_by_an_explicit_walk_with_alpha_and_pruning():
    alpha, beta = 0.5, 0.3
    deg_u = [len(r) for r in GRAPH]
    deg_i = [sum(i in r for r in GRAPH) for i in range(4)]
    walk = np.zeros((4, 4))
    for u, items in enumerate(GRAPH):
        for i in items:
            for j in items:
                if i != j:
                    walk[i, j] += (1 / deg_i[i]) ** alpha * (1 / deg_u[u]) ** alpha
    walk /= np.array(deg_i, dtype=float)[None, :] ** beta
    w = rp3beta_weights(binary(GRAPH, 4), alpha, beta, 10).toarray()
    np.testing.assert_allclose(w, walk, rtol=1e-12)
    one = rp3beta_weights(binary(GRAPH, 4), alpha, beta, 1).toarray()  # 1 neighbour per item
    np.testing.assert_allclose(one, np.where(walk == walk.max(1, keepdims=True), walk, 0))


def test_rp3beta_retriever_walks_from_the_history():
    train, catalog = tiny(GRAPH, 4)
    r = fitted(CFConfig(model="rp3beta", rp3_alpha=1.0, rp3_beta=0.5), train, catalog)
    out = r.retrieve([Request(None, [0]), Request(None, [0, 3])], 3)
    r3, r2 = np.sqrt(3), np.sqrt(2)
    # [0]: W row 0 → item 1, then 0-score ties by popularity (2: two events, 3: one)
    assert out.items[0].tolist() == [1, 2, 3]
    np.testing.assert_allclose(out.scores[0], [(1 / 2) / r3, 0, 0])
    # [0, 3]: the first step weighs each history item 1/2 (α = 1)
    assert out.items[1].tolist() == [1, 2, PAD]
    np.testing.assert_allclose(out.scores[1, :2], [(1 / 2 + 1 / 3) / r3 / 2, (1 / 3) / r2 / 2])


# ---- liked events, unknown and empty histories -----------------------------------------
RATED = [[0, 1, 2], [0, 1, 3], [1, 2, 3], [0, 3, 4], [2, 4]]
STARS = [[5, 4, 1], [4, 5, 2], [5, 3, 4], [1, 5, 4], [5, 2]]


@pytest.mark.parametrize("model", ["als", "itemknn", "bm25", "ease", "rp3beta"])
def test_min_rating_trains_on_the_liked_events_only(model):
    train, catalog = tiny(RATED, 5, STARS)
    pairs = zip(RATED, STARS, strict=True)
    liked = [[i for i, s in zip(r, st, strict=True) if s >= 4] for r, st in pairs]
    liked_train, _ = tiny(liked, 5)
    extra = {"factors": 2, "iterations": 3} if model == "als" else {}
    a = fitted(CFConfig(model=model, min_rating=4.0, **extra), train, catalog)
    b = fitted(CFConfig(model=model, **extra), liked_train, catalog)
    reqs = [Request(None, [0]), Request(None, [1, 3]), Request(None, [4])]
    x, y = a.retrieve(reqs, 3), b.retrieve(reqs, 3)
    np.testing.assert_array_equal(x.items, y.items)
    np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5)
    everything = fitted(CFConfig(model=model, min_rating="all", **extra), train, catalog)
    assert everything.config.min_rating is None


@pytest.mark.parametrize("model", ["ease", "rp3beta"])
def test_empty_and_unknown_histories_get_the_popularity_list(model):
    train, catalog = tiny(BLOCKS, 6)  # items 4 and 5 have no training event
    r = fitted(CFConfig(model=model), train, catalog)
    out = r.retrieve([Request(None), Request(None, [5]), Request(None, [0, 5]),
                      Request(None, [0])], 3)  # fmt: skip
    assert out.fallback.tolist() == [True, True, False, False]
    assert out.items[0].tolist() == [0, 1, 3]  # popularity
    assert out.items[1].tolist() == [0, 1, 3]
    np.testing.assert_array_equal(out.items[2], out.items[3])  # the unknown item adds nothing
    assert 0 not in out.items[2]


def test_a_liked_only_model_falls_back_for_a_history_of_disliked_items():
    stars = [[5, 2, 1], [4, 2, 2], [2, 3, 4], [1, 5, 4], [5, 2]]  # item 1: never rated >= 4
    train, catalog = tiny(RATED, 5, stars)
    r = fitted(CFConfig(model="ease", min_rating=4.0), train, catalog)
    out = r.retrieve([Request(None, [1]), Request(None, [0])], 2)
    assert out.fallback.tolist() == [True, False]
    assert 1 not in r.model_.items


def test_a_grid_on_a_setting_the_model_does_not_use_is_an_error():
    with pytest.raises(ValueError, match="rp3_alpha is a grid"):
        CFConfig(model="ease", rp3_alpha=[0.5, 1.0])
    with pytest.raises(ValueError, match="empty grid"):
        CFConfig(model="ease", ease_lambda=[])
    with pytest.raises(ValueError, match="ease_lambda must be > 0"):
        CFConfig(model="ease", ease_lambda=[0.0, 10.0])
    assert CFConfig(model="rp3beta", rp3_alpha=[0.5, 1], min_rating=["all", 4]).grid() == [
        {"rp3_alpha": 0.5, "rp3_beta": 0.5, "min_rating": None},
        {"rp3_alpha": 0.5, "rp3_beta": 0.5, "min_rating": 4.0},
        {"rp3_alpha": 1.0, "rp3_beta": 0.5, "min_rating": None},
        {"rp3_alpha": 1.0, "rp3_beta": 0.5, "min_rating": 4.0},
    ]


def test_a_grid_of_every_event_is_written_all_so_toml_can_hold_it():
    config = CFConfig(model="ease", min_rating=["all", 4.0])
    assert config.min_rating == [None, 4.0]
    assert config.model_dump()["min_rating"] == ["all", 4.0]
    assert CFConfig.model_validate(config.model_dump()) == config
    assert CFConfig(model="ease").model_dump()["min_rating"] is None
