"""Training lists: built from the training split only, the target always listed, the
shuffles distinct, the answers grounded, and the DPO pairs against position bias."""

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.titles import TitleIndex
from recfunnel.core.types import Request
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start, leave_last_out
from recfunnel.stages.base import FitContext
from recfunnel.stages.explain.grounded import grounding_errors
from recfunnel.stages.retrieve.cf import CFConfig, CFRetriever
from recfunnel.stages.retrieve.popularity import PopularityConfig, PopularityRetriever
from recfunnel.stages.text import PromptStyle
from recfunnel.train.examples import build_examples, held_out

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = leave_last_out(data, seed=0)
    cf = CFRetriever(CFConfig(kind="cf", model="als")).fit(FitContext(split.train, data.catalog))
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
    sets = data.catalog.genre_sets
    for e in ex:
        reason = e.chosen.split("\n", 1)[1]
        # the chosen reason is the explain stage's template: it names a liked title only
        # when that title shares a genre with the target, and every genre it calls shared
        # is the target's and the named titles' (a popularity reason otherwise)
        shares = any(sets[e.target] & sets[int(h)] for h in e.history)
        assert reason.startswith("Because you liked") == shares, reason
        assert not grounding_errors(reason, index, e.history, e.candidates,
                                    require_history=shares, item=e.target), reason  # fmt: skip
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
    cf = CFRetriever(CFConfig(kind="cf", model="als")).fit(FitContext(split.train, data.catalog))
    style = PromptStyle(noun="movie", history_items=5, title_chars=40)
    again = build_examples(
        split, data.catalog, cf, n_lists=40, shuffles=4, candidates=10, style=style, seed=3
    )
    assert [e.candidates for e in again] == [e.candidates for e in ex]
    assert np.array_equal(again[5].history, ex[5].history)


@pytest.fixture(scope="module")
def cold(shared_data):
    """The cold-start shape: first 5 items as history, popularity's top 20 with their
    ranks shown, later liked items as positives; test users of 3 seeds held out."""
    data = load_dataset("ml-latest-small", shared_data)
    splits = [cold_start(data, seed=s, n_users=100) for s in (0, 1, 2)]
    held: dict[int, set[int]] = {}
    for sp in splits:
        for user, items in held_out(sp).items():
            held.setdefault(user, set()).update(items)
    pop = PopularityRetriever(PopularityConfig(kind="popularity")).fit(
        FitContext(splits[0].train, data.catalog)
    )
    style = PromptStyle(noun="movie", history_items=5, title_chars=40, show_prev_rank=True)
    ex = build_examples(
        splits[0], data.catalog, pop, n_lists=30, shuffles=3, candidates=20, style=style,
        seed=1, history_cut=5, rejected="random", held=held,
    )  # fmt: skip
    return data, splits, held, pop, ex


def test_cold_lists_are_the_retrievers_top_with_true_ranks(cold):
    _, splits, held, pop, ex = cold
    assert len(ex) == 90 and len({e.user for e in ex}) == 30
    train = splits[0].train.frame
    for e in ex[::3]:
        seq = train[train["user"] == e.user].sort_values(["timestamp", "item"])
        assert e.history.tolist() == seq["item"].to_numpy()[:5].tolist()
        later = seq.iloc[5:]
        liked = set(later.loc[later["rating"] >= 4.0, "item"].tolist())
        assert e.target in e.positives and set(e.positives) <= liked
        assert not held.get(e.user, set()) & {*e.candidates, *e.positives}
        top = pop.retrieve([Request(e.user, e.history)], 20).items[0].tolist()
        shown = {
            int(line.split(" (ranker's rank: ")[1].rstrip(")")): line
            for line in e.messages[-1]["content"].splitlines()
            if "ranker's rank" in line
        }
        # the list is the retriever's own top 20 (nothing held out was in it here), and
        # every shown rank is the item's true rank in it
        assert sorted(e.candidates) == sorted(top)
        for rank, line in shown.items():
            label = line.split(".")[0]
            assert top[rank - 1] == e.candidates[e.labels.index(label)]


def test_cold_lists_never_use_a_test_user_of_any_seed(cold):
    _, splits, _, _, ex = cold
    tested = {int(r.user) for sp in splits for r in sp.test.requests}
    assert not tested & {e.user for e in ex}


def test_random_rejected_letters_are_wrong_and_spread(cold):
    _, _, _, _, ex = cold
    wrong = [e for e in ex if e.rejected_kind == "position"]
    assert len(wrong) == len(ex)  # 20 candidates always hold a non-positive here
    for e in wrong:
        label = e.rejected.split("\n", 1)[0]
        assert e.candidates[e.labels.index(label)] not in e.positives
    first = sum(e.rejected.startswith(f"{e.labels[0]}\n") for e in wrong)
    assert first < len(wrong) / 4  # not the first-listed letter (that taught "avoid A")
    # shuffles of one list take different positives as their target where it has several
    by_user: dict[int, set[int]] = {}
    for e in ex:
        if len(e.positives) >= 3:
            by_user.setdefault(e.user, set()).add(e.target)
    assert by_user and all(len(t) == 3 for t in by_user.values())


def test_bad_history_cut_is_refused(cold):
    data, splits, _, pop, _ = cold
    for cut in (0, [5, 0], []):
        with pytest.raises(ConfigError, match="history_cut"):
            build_examples(splits[0], data.catalog, pop, n_lists=2, shuffles=1, candidates=5,
                           style=PromptStyle(), history_cut=cut)  # fmt: skip


def test_several_history_cuts_give_one_list_per_cut(cold):
    """Cuts [5, 10, 20]: a user yields a list at each cut their training sequence is longer
    than, each with the first ``cut`` items as history and later liked items as positives
    (none held out); a single cut builds exactly the lists it built before."""
    data, splits, held, pop, one = cold
    style = PromptStyle(noun="movie", history_items=5, title_chars=40, show_prev_rank=True)
    ex = build_examples(
        splits[0], data.catalog, pop, n_lists=90, shuffles=1, candidates=20, style=style,
        seed=1, history_cut=[5, 10, 20], rejected="random", held=held,
    )  # fmt: skip
    assert len(ex) == 90 and {e.cut for e in ex} == {5, 10, 20}
    assert len({(e.user, e.cut) for e in ex}) == 90  # one order per (user, cut)
    assert len({e.user for e in ex}) < 90  # users give several lists
    train = splits[0].train.frame
    for e in ex[::4]:
        seq = train[train["user"] == e.user].sort_values(["timestamp", "item"])
        items = seq["item"].to_numpy()
        assert e.history.tolist() == items[: e.cut].tolist()
        later = seq.iloc[e.cut :]
        liked = set(later.loc[later["rating"] >= 4.0, "item"].tolist())
        assert e.positives and set(e.positives) <= liked - set(e.history.tolist())
        assert not held.get(e.user, set()) & {*e.candidates, *e.positives}
        assert not set(e.candidates) & set(e.history.tolist())
    again = build_examples(
        splits[0], data.catalog, pop, n_lists=30, shuffles=3, candidates=20, style=style,
        seed=1, history_cut=[5], rejected="random", held=held,
    )  # fmt: skip
    assert [(e.user, e.candidates) for e in again] == [(e.user, e.candidates) for e in one]


def test_make_examples_holds_out_every_evaluation_seed(shared_data):
    """`recfunnel train` with the cold-start protocol: no list from a user that any of the
    evaluation seeds tests (each seed draws other test users)."""
    from recfunnel.train.config import TrainConfig
    from recfunnel.train.finetune import make_examples

    cfg = TrainConfig.model_validate({
        "data_dir": str(shared_data), "eval_seeds": [0, 1, 2],
        "protocol": {"name": "cold-start", "n_users": 100, "history": 5},
        "examples": {"lists": 200, "shuffles": 1, "candidates": 20, "history_cut": 5,
                     "show_prev_rank": True, "retriever": {"kind": "popularity"}},
    })  # fmt: skip
    ex, style = make_examples(cfg)
    data = load_dataset("ml-latest-small", shared_data)
    tested = {int(r.user) for s in (0, 1, 2)
              for r in cold_start(data, seed=s, n_users=100).test.requests}  # fmt: skip
    assert len(tested) > 150 and style.show_prev_rank
    assert len(ex) == 200 and not tested & {e.user for e in ex}


@pytest.mark.parametrize(
    ("protocol", "history_cut"),
    [("cold-start", None), ("leave-last-out", None), ("leave-last-out", 5)],
)
@pytest.mark.parametrize("show_prev_rank", [False, True])
def test_a_held_out_item_in_training_data_is_refused(
    shared_data, monkeypatch, protocol, history_cut, show_prev_rank
):
    """If the training split (through a bug) held a user's own held-out item, every list
    shape refuses, naming the user: the check fails closed. Before, the last-item shape
    without ranks never looked at the target or the history. (Cold-start test users keep
    exactly `history` items, so only the last-item shape can list them.)"""
    import recfunnel.train.examples as examples
    from recfunnel.core.errors import LeakageError

    data = load_dataset("ml-latest-small", shared_data)
    split = (cold_start(data, seed=0, n_users=60, n_valid=20) if protocol == "cold-start"
             else leave_last_out(data, seed=0))  # fmt: skip
    pop = PopularityRetriever(PopularityConfig()).fit(FitContext(split.train, data.catalog))
    style = PromptStyle(noun="movie", history_items=5, title_chars=40,
                        show_prev_rank=show_prev_rank)  # fmt: skip
    kw = dict(n_lists=30, shuffles=1, candidates=10, style=style, seed=3,
              history_cut=history_cut)  # fmt: skip
    own = held_out(split)
    clean = build_examples(split, data.catalog, pop, **kw)
    assert clean and all(not own.get(e.user, set()) & {*e.candidates, *map(int, e.history)}
                         for e in clean)  # fmt: skip
    real = examples.ordered_events

    def leaky(frame, seed, timestamps_real=True):  # each held user's first item: a held one
        events = real(frame, seed, timestamps_real)
        first = events.groupby("user")["pos"].idxmin()
        for u, row in first.items():
            if own.get(int(u)):
                events.loc[row, "item"] = min(own[int(u)])
        return events

    monkeypatch.setattr(examples, "ordered_events", leaky)
    with pytest.raises(LeakageError, match=r"user \d+ holds its held-out item"):
        build_examples(split, data.catalog, pop, **kw)
