"""The LLM feature stage with a scripted model: position-free features, placebo, fallback.

The scripted model stands in for aggregation and fallback logic only; the real model's
order independence is measured in tests/integration/test_rerank_real.py.
"""

from collections.abc import Sequence

import numpy as np
import pytest
from test_llm_rerankers import CAT, TRAIN, prefers_first_slot, prefers_high_ids, titles_in

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.types import Request
from recfunnel.llm import LLMPool
from recfunnel.stages.base import FitContext, Trace
from recfunnel.stages.rerank.features import FEATURES, LLMFeatures, LLMFeaturesConfig
from scripted import ScriptedLLM

REQS = [Request(0, np.array([50])), Request(1, np.array([51]))]


def yes_for_high_ids(prompt: str, options: Sequence[str]) -> np.ndarray:
    """P(yes) rises with the asked item's id; a verbalizer prompt gets letter scores."""
    if "Answer Yes or No" not in prompt:
        return prefers_high_ids(prompt, options)
    item = int(prompt.split("enjoy this item: Film ")[1][:2])
    p = item / 100
    return np.log(np.array([p, 1 - p]))


def stage(llm, **cfg) -> LLMFeatures:
    s = LLMFeatures(LLMFeaturesConfig(**cfg))
    return s.fit(FitContext(TRAIN, CAT, 0, LLMPool(override=llm)))


def run(st: LLMFeatures, rows: list[list[int]], reqs=REQS) -> CandidateBatch:
    items = np.array(rows)
    scores = -np.arange(items.shape[1], dtype=float)[None].repeat(len(rows), axis=0)
    batch = CandidateBatch(items, scores, "fuse:rrf")
    trace = Trace(reqs[: len(rows)], k=items.shape[1], depth=items.shape[1], final=batch,
                  batches={"fuse:rrf": batch}, modes={"fuse:rrf": "list"})  # fmt: skip
    return st(reqs[: len(rows)], trace)


def by_item(out: CandidateBatch, row: int, key: str) -> dict[int, float]:
    return dict(zip(out.items[row].tolist(), out.extras[key][row].tolist(), strict=True))


def test_features_follow_content_and_keep_the_input_order():
    llm = ScriptedLLM(logprobs=yes_for_high_ids)
    out = run(stage(llm, top_n=5, shuffles=3), [[1, 7, 3, 9, 5]])
    assert out.items[0].tolist() == [1, 7, 3, 9, 5]  # a feature stage does not reorder
    verb, yes = by_item(out, 0, "llm_verbalizer"), by_item(out, 0, "llm_yes")
    assert sorted(verb, key=verb.get, reverse=True) == [9, 7, 5, 3, 1]
    assert yes == pytest.approx({i: i / 100 for i in (1, 7, 3, 9, 5)})
    assert by_item(out, 0, "llm_verbalizer_rank")[9] == 0 == by_item(out, 0, "llm_yes_rank")[9]
    # renormalised over the listed letters: log((id + 1) / sum) for this content-only model
    assert verb == pytest.approx({i: np.log((i + 1) / 30) for i in (1, 7, 3, 9, 5)})
    # 3 listings + 5 yes/no questions, each answered once
    assert llm.usage.calls == 8 and set(out.extras) == set(FEATURES)


def test_the_input_order_never_reaches_the_model():
    """The listings are seeded shuffles of the candidates in item order: the same items in
    any input order give the same prompts and the same features, even for a model that
    only reads slots."""
    for fn in (prefers_first_slot, yes_for_high_ids):
        a_llm, b_llm = ScriptedLLM(logprobs=fn), ScriptedLLM(logprobs=fn)
        a = run(stage(a_llm, top_n=5, shuffles=2), [[1, 7, 3, 9, 5]])
        b = run(stage(b_llm, top_n=5, shuffles=2), [[9, 5, 1, 3, 7]])
        assert a_llm.prompts == b_llm.prompts
        for key in FEATURES:
            assert by_item(a, 0, key) == by_item(b, 0, key), key


def test_slot_bias_averages_out_over_shuffles():
    """A model that only likes the first slot: its verbalizer feature says nothing about
    the items, and more shuffles spread it less."""
    spread = {}
    for k in (1, 4, 16):
        out = run(stage(ScriptedLLM(logprobs=prefers_first_slot), top_n=10, shuffles=k,
                        pointwise=False), [list(range(10, 20))])  # fmt: skip
        spread[k] = float(np.std(out.extras["llm_verbalizer"][0]))
    assert spread[4] < 0.7 * spread[1] and spread[16] < 0.6 * spread[4]


def test_listings_are_seeded_by_user_and_shuffle():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    s = stage(llm, top_n=5, shuffles=3)
    items = np.array([3, 1, 9, 7, 5])
    first = [x.tolist() for x in s.listings(REQS[0], items)]
    assert first == [x.tolist() for x in s.listings(REQS[0], items[::-1])]
    assert len({tuple(x) for x in first}) == 3  # three different listings
    assert first != [x.tolist() for x in s.listings(REQS[1], items)]
    prompts = llm.prompts
    run(s, [[3, 1, 9, 7, 5]])
    assert [titles_in(p) for p in prompts[:3]] == first


def test_placebo_cuts_the_link_between_answers_and_items():
    rows = [[1, 7, 3, 9, 5, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]]
    real = run(stage(ScriptedLLM(logprobs=yes_for_high_ids), top_n=8), rows)
    fake = run(stage(ScriptedLLM(logprobs=yes_for_high_ids), top_n=8, placebo=True), rows)
    again = run(stage(ScriptedLLM(logprobs=yes_for_high_ids), top_n=8, placebo=True), rows)
    for key in FEATURES:
        for r in range(2):  # the same answers, reassigned within each list
            np.testing.assert_allclose(np.sort(real.extras[key][r]), np.sort(fake.extras[key][r]))
        np.testing.assert_array_equal(fake.extras[key], again.extras[key])  # seeded
    assert not np.array_equal(real.extras["llm_yes"], fake.extras["llm_yes"])
    # one permutation per list, shared by all four features: they stay consistent
    for r in range(2):
        order = np.argsort(-fake.extras["llm_yes"][r], kind="stable")
        assert fake.extras["llm_yes_rank"][r][order].tolist() == list(range(8))


def test_backend_down_leaves_nan_and_counts_the_fallback():
    llm = ScriptedLLM(logprobs=yes_for_high_ids)
    llm.down = True
    st = stage(llm, top_n=5)
    out = run(st, [[1, 7, 3, 9, 5], [2, 4, 6, 8, 10]])
    assert out.items.tolist() == [[1, 7, 3, 9, 5], [2, 4, 6, 8, 10]]
    assert out.fallback.tolist() == [True, True]
    assert all(np.isnan(out.extras[k]).all() for k in FEATURES)
    assert out.stats.fallback_rows == 2 and out.stats.rows == 2


def test_short_rows_keep_padding_out():
    llm = ScriptedLLM(logprobs=yes_for_high_ids)
    out = run(stage(llm, top_n=5), [[1, 7, 3, -1, -1]])
    assert np.isnan(out.extras["llm_yes"][0, 3:]).all()
    assert np.isfinite(out.extras["llm_yes"][0, :3]).all()
    assert llm.usage.calls == 2 + 3  # two listings, three yes/no questions
