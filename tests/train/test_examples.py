"""Training lists: built from the training split only, the target always listed, the
shuffles distinct, the answers grounded, and the DPO pairs against position bias."""

import numpy as np
import pytest

from recfunnel.data import load_dataset
from recfunnel.data.splits import leave_last_out
from recfunnel.explain import TitleIndex, grounding_errors
from recfunnel.llm.prompts import PromptStyle
from recfunnel.retrieve.cf import CFConfig, CFRetriever
from recfunnel.train.examples import build_examples, held_out

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = leave_last_out(data, seed=0)
    cf = CFRetriever(CFConfig(kind="cf", model="als")).fit(split.train, data.catalog)
    style = PromptStyle(noun="movie", history_items=5, title_chars=40)
    ex = build_examples(
        split, data.catalog, cf, n_lists=40, shuffles=4, candidates=10, style=style, seed=3
    )
    return data, split, ex


def test_no_validation_or_test_item_is_used(built):
    _, split, ex = built
    held = held_out(split)
    train_pairs = set(zip(split.train.frame["user"], split.train.frame["item"], strict=True))
    assert len(ex) == 160
    for e in ex:
        assert (e.user, e.target) in train_pairs  # the target is a training interaction
        assert not held[e.user] & set(e.candidates)  # held-out items are never listed
        assert not held[e.user] & {int(i) for i in e.history}
        assert e.target not in e.history


def test_target_listed_once_and_shuffles_differ(built):
    _, _, ex = built
    by_user: dict[int, list] = {}
    for e in ex:
        assert e.candidates.count(e.target) == 1 and len(set(e.candidates)) == 10
        assert e.chosen.startswith(f"{e.target_label}\n")
        by_user.setdefault(e.user, []).append(e)
    for group in by_user.values():
        orders = {tuple(e.candidates) for e in group}
        assert len(orders) == 4 and len({frozenset(o) for o in orders}) == 1
    # the target's letter is spread over the list, not stuck at one position
    labels = [e.target_label for e in ex]
    assert max(labels.count(x) for x in set(labels)) / len(labels) < 0.25
    assert len(set(labels)) >= 8


def test_answers_are_grounded_and_pairs_oppose_position_bias(built):
    data, _, ex = built
    index = TitleIndex(data.catalog)
    for e in ex:
        reason = e.chosen.split("\n", 1)[1]
        assert not grounding_errors(reason, index, e.history, e.candidates)
        if e.rejected_kind == "position":
            assert e.target != e.candidates[0] and e.rejected.startswith(f"{e.labels[0]}\n")
        else:
            assert e.target == e.candidates[0]
            assert grounding_errors(e.rejected.split("\n", 1)[1], index, e.history, e.candidates)
    kinds = [e.rejected_kind for e in ex]
    assert 0 < kinds.count("ungrounded") < kinds.count("position")
    assert "Answer with its letter only" in ex[0].messages[-1]["content"]  # the verbalizer's


def test_same_seed_same_examples(built, shared_data):
    data, split, ex = built
    cf = CFRetriever(CFConfig(kind="cf", model="als")).fit(split.train, data.catalog)
    style = PromptStyle(noun="movie", history_items=5, title_chars=40)
    again = build_examples(
        split, data.catalog, cf, n_lists=40, shuffles=4, candidates=10, style=style, seed=3
    )
    assert [e.candidates for e in again] == [e.candidates for e in ex]
    assert np.array_equal(again[5].history, ex[5].history)
