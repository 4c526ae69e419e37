"""LLM rerankers with a scripted model: aggregation, blending, windows, repair, fallback.

The scripted model only stands in for parsing and fallback logic; tests/integration runs
every reranker against the real bundled model.
"""

from collections.abc import Sequence

import numpy as np
import pytest

from recfunnel.core.candidates import CandidateBatch, merge_head
from recfunnel.core.types import Catalog, Interactions, Request
from recfunnel.llm import LLMPool
from recfunnel.pipeline import Funnel, Shared
from recfunnel.stages.base import FitContext
from recfunnel.stages.registry import build_stage
from recfunnel.stages.rerank.llm import RerankConfig
from recfunnel.stages.rerank.methods import (
    PermutationReranker,
    PointwiseReranker,
    VerbalizerReranker,
)
from recfunnel.stages.rerank.prompts import LABELS
from scripted import ScriptedLLM

N_ITEMS = 60
CAT = Catalog.build(list(range(N_ITEMS)), [f"Film {i:02d}" for i in range(N_ITEMS)])


def titles_in(prompt: str) -> list[int]:
    """Item indices in the order the prompt lists candidates."""
    return [int(line.split("Film ")[1][:2]) for line in prompt.splitlines()
            if "Film " in line and not line.startswith("- ")]  # fmt: skip


def prefers_high_ids(prompt: str, options: Sequence[str]) -> np.ndarray:
    """Likes items with higher index, wherever they are listed (a content signal)."""
    items = titles_in(prompt)
    return np.log(np.array([items[i] + 1.0 if i < len(items) else 1e-9
                            for i in range(len(options))]) / 100)  # fmt: skip


def prefers_first_slot(prompt: str, options: Sequence[str]) -> np.ndarray:
    """Pure position bias: always likes whatever is listed first."""
    return -np.arange(len(options), dtype=float)


def head(rows: list[list[int]]) -> CandidateBatch:
    items = np.array(rows)
    scores = -np.arange(items.shape[1], dtype=float)[None].repeat(len(rows), axis=0)
    return CandidateBatch(items, scores, "fuse:rrf")


# item i was seen i times in training: popularity prefers high ids
TRAIN = Interactions.build(np.zeros(N_ITEMS * (N_ITEMS - 1) // 2, dtype=int),
                           np.repeat(np.arange(N_ITEMS), np.arange(N_ITEMS)), N_ITEMS)  # fmt: skip


def make(cls, llm, **cfg):
    return cls(RerankConfig(**cfg)).fit(FitContext(TRAIN, CAT, 0, LLMPool(override=llm)))


REQS = [Request(0, np.array([50])), Request(1, np.array([51]))]


def test_verbalizer_orders_by_label_logprob():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    out = make(VerbalizerReranker, llm, top_n=5).rerank(
        REQS, head([[1, 7, 3, 9, 5], [2, 4, 6, 8, 0]])
    )
    assert out.items.tolist() == [[9, 7, 5, 3, 1], [8, 6, 4, 2, 0]]
    assert out.stage == "rerank:verbalizer"
    assert llm.usage.calls == 2 and out.stats.llm_calls == 2  # one forward pass per user
    # extras: raw LLM scores, in the output order (input positions are the funnel's)
    assert "input_pos" not in out.extras
    assert np.all(np.diff(out.extras["llm_score"][0]) < 0)


def test_position_bias_is_measured_and_averaged_by_shuffles():
    llm = ScriptedLLM(logprobs=prefers_first_slot)
    one = make(VerbalizerReranker, llm, top_n=6).rerank(REQS[:1], head([[1, 2, 3, 4, 5, 6]]))
    assert one.items.tolist() == [[1, 2, 3, 4, 5, 6]]  # follows the input order exactly
    rr = make(VerbalizerReranker, ScriptedLLM(logprobs=prefers_first_slot), top_n=6, shuffles=4)
    out = rr.rerank(REQS[:1], head([[1, 2, 3, 4, 5, 6]]))
    assert out.stats.figures()["llm_calls"] == 4
    assert out.stats.figures()["order_agreement"] < 0.5  # orders disagree: the signal is position
    assert sorted(out.items[0].tolist()) == [1, 2, 3, 4, 5, 6]
    # content signal survives shuffling: all orders agree
    rr = make(VerbalizerReranker, ScriptedLLM(logprobs=prefers_high_ids), top_n=6, shuffles=4)
    out = rr.rerank(REQS[:1], head([[1, 2, 3, 4, 5, 6]]))
    assert out.items.tolist() == [[6, 5, 4, 3, 2, 1]]
    assert out.stats.figures()["order_agreement"] == pytest.approx(1.0)


def test_verbalizer_scores_long_lists_in_chunks():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    rr = make(VerbalizerReranker, llm, top_n=45, window=20)
    rows = [list(range(45))]
    out = rr.rerank(REQS[:1], head(rows))
    assert out.stats.figures()["llm_calls"] == 3  # 20 + 20 + 5 candidates
    assert sorted(out.items[0].tolist()) == rows[0]
    assert [len(titles_in(p)) for p in llm.prompts] == [20, 20, 5]
    # each prompt's label log-probs are renormalised over its own labels: every chunk's
    # probabilities sum to 1, so the 5-item chunk's items are not favoured by its size
    lp = dict(zip(out.items[0].tolist(), out.extras["llm_score"][0].tolist(), strict=True))
    for lo, hi in ((0, 20), (20, 40), (40, 45)):
        assert sum(np.exp(lp[i]) for i in range(lo, hi)) == pytest.approx(1.0)
    # within a chunk the content signal orders items: the chunk's best beats its worst
    assert lp[19] > lp[0] and lp[44] > lp[40]


def test_shuffles_depend_on_seed_and_user_only():
    rr = make(VerbalizerReranker, ScriptedLLM(logprobs=prefers_first_slot), top_n=6, shuffles=3)
    a = rr._orders(Request(5), 6)
    b = rr._orders(Request(5), 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].tolist() == list(range(6))
    assert not np.array_equal(a[1], rr._orders(Request(6), 6)[1])


def test_blend_weighs_the_previous_stage():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    rows = [[1, 2, 3, 4, 5]]
    assert (
        make(VerbalizerReranker, llm, top_n=5, blend=1.0)
        .rerank(REQS[:1], head(rows))
        .items.tolist()
        == rows
    )
    assert (make(VerbalizerReranker, llm, top_n=5, blend=0.0).rerank(REQS[:1], head(rows))
            .items.tolist() == [[5, 4, 3, 2, 1]])  # fmt: skip
    # half and half: 0.5·z(log p) + 0.5·z(prior), by hand for log p = log((i+1)/100) and the
    # prior (4 - rank) / 4 = [1, .75, .5, .25, 0]: [-.095, .074, .091, .025, -.094]
    mid = make(VerbalizerReranker, llm, top_n=5, blend=0.5).rerank(REQS[:1], head(rows))
    assert mid.items.tolist() == [[3, 2, 4, 5, 1]]
    np.testing.assert_allclose(mid.scores[0], [0.0908, 0.0736, 0.0248, -0.0938, -0.0954],
                               atol=5e-4)  # fmt: skip


def shown_ranks(prompt: str) -> dict[int, int]:
    """Item -> the ranker's rank printed beside it (show_prev_rank)."""
    return {int(line.split("Film ")[1][:2]): int(line.split("rank: ")[1].rstrip(")"))
            for line in prompt.splitlines() if "rank: " in line}  # fmt: skip


def test_a_shuffled_input_keeps_the_previous_ranks():
    """The position probe shuffles where candidates are listed, not what the ranker said:
    the prompt still shows each item's rank and a full blend restores the ranker's order."""
    rows = [[11, 12, 13, 14, 15]]
    shuffled = head([[13, 15, 11, 14, 12]])
    shuffled.extras["prev_rank"] = np.array([[2, 4, 0, 3, 1]])
    llm = ScriptedLLM(logprobs=prefers_first_slot)
    rr = make(VerbalizerReranker, llm, top_n=5, show_prev_rank=True, blend=1.0)
    out = rr.rerank(REQS[:1], shuffled)
    assert titles_in(llm.prompts[0]) == [13, 15, 11, 14, 12]  # listed as shuffled
    assert shown_ranks(llm.prompts[0]) == {11: 1, 12: 2, 13: 3, 14: 4, 15: 5}
    assert out.items.tolist() == rows  # the prior is the ranker's rank, not the listing
    assert out.extras["prev_rank"][0].tolist() == [0, 1, 2, 3, 4]
    # without a prior the position-biased model follows the listing
    plain = make(VerbalizerReranker, ScriptedLLM(logprobs=prefers_first_slot), top_n=5)
    assert plain.rerank(REQS[:1], shuffled).items.tolist() == [[13, 15, 11, 14, 12]]


def test_pointwise_reads_p_yes_and_ignores_shuffles():
    def yes_for_even(prompt, options):
        item = int(prompt.split("enjoy this item: Film ")[1][:2])
        return np.log([0.9, 0.1]) if item % 2 == 0 else np.log([0.2, 0.8])

    llm = ScriptedLLM(logprobs=yes_for_even)
    rr = make(PointwiseReranker, llm, top_n=4, shuffles=5)
    out = rr.rerank(REQS[:1], head([[1, 2, 3, 4]]))
    assert out.items.tolist() == [[2, 4, 1, 3]]
    assert out.stats.figures()["llm_calls"] == 4  # one per candidate, no shuffles
    np.testing.assert_allclose(out.extras["llm_score"][0], [0.9, 0.9, 0.2, 0.2])


def test_permutation_windows_back_to_front():
    rr = make(PermutationReranker, ScriptedLLM(text=lambda p: ""), top_n=50, window=20, step=10)
    assert rr.windows(50) == [(30, 50), (20, 40), (10, 30), (0, 20)]
    assert rr.windows(20) == [(0, 20)]
    assert rr.windows(25) == [(5, 25), (0, 15)]


def test_permutation_sliding_window_brings_best_to_top():
    def reverse_ids(prompt):  # put the highest-numbered film first: [k] > ... > [1]
        items = titles_in(prompt)
        order = sorted(range(len(items)), key=lambda j: -items[j])
        return " > ".join(f"[{j + 1}]" for j in order)

    llm = ScriptedLLM(text=reverse_ids)
    rr = make(PermutationReranker, llm, top_n=50, window=20, step=10)
    out = rr.rerank(REQS[:1], head([list(range(50))]))
    assert out.stats.figures()["llm_calls"] == 4 and out.stats.figures()["invalid_rate"] == 0.0
    assert out.items[0, :10].tolist() == list(range(49, 39, -1))  # the top-10 is exact
    assert sorted(out.items[0].tolist()) == list(range(50))


def test_permutation_repairs_and_counts_invalid_output():
    llm = ScriptedLLM(text=lambda p: "[3] > [3] > [7] > movie!")
    rr = make(PermutationReranker, llm, top_n=4)
    out = rr.rerank(REQS, head([[10, 11, 12, 13], [20, 21, 22, 23]]))
    assert out.items.tolist() == [[12, 10, 11, 13], [22, 20, 21, 23]]
    assert out.stats.figures()["invalid_rate"] == 1.0 and out.stats.figures()["fallback_rate"] == 0


def test_backend_down_keeps_input_order_and_counts_it():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    llm.down = True
    rr = make(VerbalizerReranker, llm, top_n=5)
    h = head([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    out = rr.rerank(REQS, h)
    assert out.items.tolist() == h.items.tolist()
    assert out.fallback.tolist() == [True, True]
    assert out.stats.figures()["fallback_rate"] == 1.0 and out.stats.figures()["llm_errors"] >= 1


def test_short_rows_and_padding():
    llm = ScriptedLLM(logprobs=prefers_high_ids)
    h = CandidateBatch(np.array([[1, 3, -1], [-1, -1, -1]]),
                       np.array([[2.0, 1.0, -np.inf], [-np.inf] * 3]), "x")  # fmt: skip
    out = make(VerbalizerReranker, llm, top_n=3).rerank(REQS, h)
    # the real items are reordered (the model prefers 3), the padding stays behind them
    assert out.items.tolist() == [[3, 1, -1], [-1, -1, -1]]
    assert np.isneginf(out.scores[0, 2]) and np.isnan(out.extras["llm_score"][0, 2])
    assert [len(titles_in(p)) for p in llm.prompts] == [2]  # padding is never listed
    assert out.stats.rows == 2 and not out.fallback.any()


def test_merge_head_keeps_the_tail():
    full = head([[1, 2, 3, 4, 5, 6]])
    reranked = CandidateBatch(np.array([[3, 1, 2]]), np.array([[0.9, 0.5, 0.1]]), "rerank:x")
    merged = merge_head(reranked, full)
    assert merged.items.tolist() == [[3, 1, 2, 4, 5, 6]]
    assert np.all(np.diff(merged.scores[0]) < 0)


def test_config_limits():
    with pytest.raises(ValueError):
        RerankConfig(kind="verbalizer", window=len(LABELS) + 1)
    assert RerankConfig(kind="verbalizer", top_n=200).top_n == 200  # scored in chunks
    with pytest.raises(ValueError):
        RerankConfig(step=30, window=20)
    assert isinstance(build_stage(RerankConfig(kind="permutation")), PermutationReranker)


def test_funnel_runs_rerank_stage_with_trace(shared_data):
    """Funnel wiring with a scripted model: trace, stats, merged final, shared LLM."""
    from recfunnel.data import load_dataset
    from recfunnel.data.splits import cold_start
    from recfunnel.pipeline import builtin_pipeline

    data = load_dataset("ml-latest-small", shared_data)
    split = cold_start(data, seed=0, n_users=6)
    cfg = builtin_pipeline("hybrid+llm-verbalizer")
    scripted = ScriptedLLM(logprobs=lambda p, o: -np.arange(len(o), dtype=float)[::-1])
    f = Funnel(cfg, seed=0, shared=Shared.with_llm(scripted)).fit(split.train, data.catalog)
    res = f.run(split.test.requests, 50)
    assert list(res.batches) == ["retrieve:cf", "retrieve:content", "retrieve:popularity",
                                 "fuse:rrf", "rerank:verbalizer"]  # fmt: skip
    fused, rer = res.batches["fuse:rrf"], res.batches["rerank:verbalizer"]
    assert rer.depth == 20 and res.final.depth == 50
    # the scripted model prefers the last-listed candidate: the head is reversed
    np.testing.assert_array_equal(rer.items, fused.items[:, :20][:, ::-1])
    np.testing.assert_array_equal(res.final.items[:, 20:], fused.items[:, 20:50])
    assert res.stats["rerank:verbalizer"].figures()["llm_calls_per_user"] == 1.0
    assert "Movies the user liked" in scripted.prompts[0]  # the dataset's noun
