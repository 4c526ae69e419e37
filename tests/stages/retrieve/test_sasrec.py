"""SASRec learns sequences: it overfits a tiny cyclic set, reads order, masks history."""

import numpy as np
import pytest

from recfunnel.core.types import Catalog, Interactions, Request
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve.sasrec import SASRecConfig, SASRecRetriever, _windows, left_pad

N = 12


def cyclic(n_users: int = 40, length: int = 8, seed: int = 0) -> Interactions:
    """Every user walks the cycle 0 → 1 → … → 11 → 0 from a random start."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start = rng.integers(N)
        for t in range(length):
            users.append(u)
            items.append((start + t) % N)
            times.append(t)
    return Interactions.build(users, np.array(items), N, timestamp=np.array(times, float))


CAT = Catalog.build(list(range(N)), [f"item {i}" for i in range(N)])
SMALL = dict(hidden=32, blocks=1, dropout=0.0, epochs=80, batch_size=16, lr=5e-3, max_len=6)


@pytest.fixture(scope="module")
def model():
    return SASRecRetriever(SASRecConfig(**SMALL)).fit(FitContext(cyclic(), CAT))


def test_overfits_a_tiny_cyclic_sequence_set(model):
    assert model.losses_[-1] < 0.1 < model.losses_[0]
    requests = [Request(None, np.array([(s + t) % N for t in range(3)])) for s in range(N)]
    out = model.retrieve(requests, 3)
    nxt = [(s + 3) % N for s in range(N)]
    assert out.items[:, 0].tolist() == nxt  # HR@1 = 1: the next item of every cycle


def test_reads_order_not_just_the_set(model):
    """Same items, other order: the prediction follows the last item."""
    fwd = model.retrieve([Request(None, np.array([4, 5, 6]))], 1).items[0, 0]
    back = model.retrieve([Request(None, np.array([6, 5, 4]))], 2).items[0]
    assert fwd == 7 and 7 not in back[:1]


def test_masks_history_and_falls_back_on_empty_history(model):
    out = model.retrieve([Request(None, np.arange(10)), Request(None, np.array([], int))], 2)
    assert set(out.items[0].tolist()) == {10, 11}
    assert out.fallback.tolist() == [False, True]


def test_deterministic_under_a_seed():
    a = SASRecRetriever(SASRecConfig(**{**SMALL, "epochs": 3})).fit(FitContext(cyclic(), CAT))
    b = SASRecRetriever(SASRecConfig(**{**SMALL, "epochs": 3})).fit(FitContext(cyclic(), CAT))
    req = [Request(None, np.array([1, 2, 3]))]
    np.testing.assert_array_equal(a.item_scores(req), b.item_scores(req))


def test_windows_and_padding():
    rows = _windows([np.arange(7)], max_len=3)  # tokens 1..7, cut from the end
    assert rows.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4]]
    assert left_pad([np.array([5]), np.arange(5)], 3).tolist() == [[0, 0, 6], [3, 4, 5]]


def test_sampled_softmax_also_learns_the_cycle():
    """The large-catalog path (true item vs 4 shared negatives) still finds the next item."""
    m = SASRecRetriever(SASRecConfig(**{**SMALL, "negatives": 4})).fit(FitContext(cyclic(), CAT))
    requests = [Request(None, np.array([(s + t) % N for t in range(3)])) for s in range(N)]
    hits = m.retrieve(requests, 1).items[:, 0] == [(s + 3) % N for s in range(N)]
    assert hits.mean() >= 0.9
