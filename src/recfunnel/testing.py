"""The contract every stage honours, as a reusable test suite (scikit-learn's
``parametrize_with_checks`` for recfunnel stages).

A new stage passes when :func:`check_stage` passes on its config::

    from recfunnel.testing import CHECKS, Harness, check_stage
    check_stage(MyConfig(), split.train, catalog, split, split.test.requests[:6])  # all
    h = Harness(MyConfig(), split.train, catalog, split)    # or one pytest case per check
    for name, check in CHECKS.items():
        check(h, split.train, split.test.requests[:6])

Each check runs the stage inside the smallest pipeline that feeds it (a retriever alone; a
fusion after two retrievers; a head stage after a popularity pool; an explanation at the
end), so what is tested is the stage as a funnel runs it:

- ``fit`` returns the stage itself;
- no request's history item is returned;
- the same seed gives the same output (two independent fits);
- a batch gives the same rows as the same requests one by one;
- a request with an empty history is answered;
- the stage's figures serialise to strict JSON;
- the fitted stage pickles (the Ray engine ships it) and answers the same afterwards;
- a stage the position probe shuffles (``probed``) says where each output item sat in its
  input (``extras["input_pos"]``, derived by the funnel), which the diagnosis reads;
- ``fit`` and ``tune`` leave the config unchanged (learned state ends in ``_``);
- a stage asked before ``fit`` raises :class:`~recfunnel.core.errors.NotFittedError`;
- a ``head`` stage returns a permutation of its head (the order itself, if it
  ``keeps_order``);
- two calls give the same answer and leave the stage unchanged (figures come back in the
  batch's ``stats``).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recfunnel.core.candidates import PAD, CandidateBatch, permutes
from recfunnel.core.errors import NotFittedError
from recfunnel.core.strict_json import json_safe
from recfunnel.core.types import Catalog, Interactions, Request, Split
from recfunnel.llm import LLM, PROCESS_POOL, LLMPool
from recfunnel.pipeline import Funnel, PipelineConfig, Shared
from recfunnel.pipeline.funnel import with_seed
from recfunnel.stages.base import FitContext, Stage, StageConfig, Trace
from recfunnel.stages.registry import build_stage, stage_class

EXAMPLES: dict[str, dict[str, Any]] = {
    "popularity": {},
    "random": {"seed": 3},
    "cf": {"factors": 16, "iterations": 5},
    "content": {},
    "sasrec": {"epochs": 1, "hidden": 16, "max_len": 20},
    "fuse": {"method": "rrf"},
    "ltr": {"top_n": 30, "n_estimators": 20},
    "verbalizer": {"top_n": 6, "shuffles": 2},
    "permutation": {"top_n": 5, "window": 4, "step": 2},
    "pointwise": {"top_n": 4},
    "goal": {"top_n": 4, "max_visits": 2},
    "mmr": {"top_n": 10},
    "dpp": {"top_n": 10},
    "fair": {"top_n": 10},
    "exposure": {"top_n": 20},
    "llm-features": {"top_n": 5, "shuffles": 2},
    "explain": {"top_k": 2},
}
"""A small config of every registered kind, for the contract suite (a test checks that
every kind in the registry has one, so no stage skips the contract)."""

K = 10


def example(kind: str) -> StageConfig:
    """The suite's config for ``kind``."""
    cls = stage_class(kind).config_class
    return cls.model_validate({"kind": kind, **EXAMPLES[kind]})


def harness(config: StageConfig) -> PipelineConfig:
    """The smallest pipeline that feeds ``config``'s stage."""
    mode = stage_class(config.kind).mode
    pop = {"kind": "popularity"}
    if mode == "pool":
        stages: list[Any] = [config]
    elif mode == "list":
        stages = [pop, {"kind": "cf", "factors": 16, "iterations": 5}, config]
    else:
        stages = [pop, config]
    return PipelineConfig.model_validate({"name": f"contract:{config.kind}", "pool_size": 40,
                                          "stages": stages})  # fmt: skip


class Harness:
    """One stage fitted (and tuned) inside its harness pipeline."""

    def __init__(self, config: StageConfig, train: Interactions, catalog: Catalog,
                 split: Split, llm: LLM | None = None, seed: int = 0) -> None:  # fmt: skip
        self.config, self.catalog, self.split, self.llm = config, catalog, split, llm
        self.seed = seed
        self.funnel = Funnel(harness(config), seed, Shared.with_llm(llm)).fit(train, catalog)
        self.funnel.tune(split)
        self.name = self.funnel.names_[-1]
        self.stage: Stage[Any] = self.funnel.stages_[-1]

    def output(self, requests: Sequence[Request]) -> CandidateBatch:
        """The stage's own output for ``requests``."""
        trace = self.funnel.run(list(requests), K)
        return self.own(trace)

    def own(self, trace: Trace) -> CandidateBatch:
        return trace.notes[self.name] if self.stage.mode == "note" else trace.batches[self.name]


def _same(a: CandidateBatch, b: CandidateBatch, what: str) -> None:
    np.testing.assert_array_equal(a.items, b.items, err_msg=what)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-9, err_msg=what)
    if "explanation" in a.extras:
        ta = [[getattr(e, "text", None) for e in row] for row in a.extras["explanation"]]
        tb = [[getattr(e, "text", None) for e in row] for row in b.extras["explanation"]]
        assert ta == tb, f"{what}: explanations differ"


# ---- the checks -----------------------------------------------------------------------
def check_fit_returns_self(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    stage = build_stage(h.stage.config)
    pool = LLMPool(override=h.llm)
    ctx = FitContext(train, h.catalog, 0, pool, list(h.funnel.stages_[:-1]))
    assert stage.fit(ctx) is stage, f"{h.config.kind}: fit() must return the stage itself"


def check_no_history_items(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    out = h.output(requests)
    for row, req in zip(out.items, requests, strict=True):
        back = set(row[row != PAD].tolist()) & set(req.history.tolist())
        assert not back, f"{h.config.kind} returned history items {sorted(back)}"


def check_deterministic(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    again = Harness(h.config, train, h.catalog, h.split, h.llm)
    _same(h.output(requests), again.output(requests), f"{h.config.kind}: same seed, two fits")


def check_batch_equals_single(h: Harness, train: Interactions,
                              requests: Sequence[Request]) -> None:  # fmt: skip
    batch = h.output(requests)
    for i, req in enumerate(requests):
        one = h.output([req])
        np.testing.assert_array_equal(
            batch.items[i, : one.depth], one.items[0],
            err_msg=f"{h.config.kind}: row {i} differs when asked alone",
        )  # fmt: skip


def check_empty_history(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    out = h.output([Request(None), requests[0]])
    assert out.items.shape[0] == 2, f"{h.config.kind}: an empty history must get a row"
    if h.stage.mode != "note":
        assert (out.items[0] != PAD).any(), f"{h.config.kind}: nothing for an empty history"


def check_stats_json(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    trace = h.funnel.run(list(requests), K)
    st = trace.stats.get(h.name)
    if st is not None:
        json.dumps(json_safe(st.figures()), allow_nan=False)
        assert all(isinstance(v, float) for v in st.figures().values())
    json.dumps(json_safe(h.funnel.tuned_), allow_nan=False)


def check_pickles(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    trace = h.funnel.run(list(requests), K)
    copy = pickle.loads(pickle.dumps(h.funnel))
    before = PROCESS_POOL.override
    PROCESS_POOL.override = h.llm  # what a Ray actor would load, here the same model
    try:
        again = copy.run(list(requests), K)
    finally:
        PROCESS_POOL.override = before
    _same(h.own(trace), h.own(again), f"{h.config.kind}: after a pickle round trip")


def check_probed_input_positions(h: Harness, train: Interactions,
                                 requests: Sequence[Request]) -> None:  # fmt: skip
    """A probed stage that reorders says where each item stood (``input_pos``, what the
    position probe reads); one without it must keep its input order exactly."""
    if not h.stage.probed:
        return
    out = h.output(requests)
    given = h.funnel.run(list(requests), K).inputs[h.name].items[:, : out.depth]
    if not out.reorders:
        np.testing.assert_array_equal(
            out.items, given,
            err_msg=f"{h.config.kind}: a probed stage that reorders must give "
            "extras['input_pos']",
        )  # fmt: skip
        return
    real, pos = out.items != PAD, out.extras["input_pos"]
    np.testing.assert_array_equal(
        np.take_along_axis(given, np.where(real, pos, 0), axis=1)[real], out.items[real],
        err_msg=f"{h.config.kind}: input_pos does not point at each item's input slot",
    )  # fmt: skip


def check_config_unchanged(h: Harness, train: Interactions,
                           requests: Sequence[Request]) -> None:  # fmt: skip
    """``fit`` and ``tune`` leave the config as the user wrote it (the run's seed filled in):
    what a stage learns lives in attributes ending in ``_`` (scikit-learn's
    ``check_dont_overwrite_parameters``)."""
    assert h.stage.config == with_seed(h.config, h.seed), (
        f"{h.config.kind}: fit/tune rewrote the config: {h.stage.config!r}"
    )


def check_unfitted_raises(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    """A stage asked before ``fit`` raises :class:`NotFittedError`, not whatever attribute
    happens to be missing (scikit-learn's ``check_estimators_unfitted``)."""
    trace = h.funnel.run_before(h.name, list(requests), K)
    try:
        build_stage(h.stage.config)(list(requests), trace)
    except NotFittedError:
        return
    raise AssertionError(f"{h.config.kind}: an unfitted stage answered instead of raising "
                         "NotFittedError")  # fmt: skip


def check_head_permutes(h: Harness, train: Interactions, requests: Sequence[Request]) -> None:
    """A ``head`` stage, probed or not, returns exactly the items of its head, reordered
    (the funnel refuses anything else); called directly, not through the funnel."""
    if h.stage.mode != "head":
        return
    trace = h.funnel.run_before(h.name, list(requests), K)
    out = h.stage(list(requests), trace)
    head = trace.head(h.stage.top_n)
    assert permutes(out.items, head.items).all(), (
        f"{h.config.kind}: a head stage returned items that are not its head's"
    )
    if h.stage.keeps_order:
        np.testing.assert_array_equal(
            out.items, head.items, err_msg=f"{h.config.kind}: keeps_order, yet reordered"
        )


def check_call_leaves_stage(h: Harness, train: Interactions,
                            requests: Sequence[Request]) -> None:  # fmt: skip
    """Two calls give the same answer and leave the stage as it was: a call's figures come
    back with its batch (``stats``), never through the stage's attributes."""
    before = pickle.dumps(h.stage)
    trace = h.funnel.run_before(h.name, list(requests), K)
    a, b = h.stage(list(requests), trace), h.stage(list(requests), trace)
    _same(a, b, f"{h.config.kind}: two calls")
    assert pickle.dumps(h.stage) == before, f"{h.config.kind}: a call changed the stage"


CHECKS: dict[str, Callable[[Harness, Interactions, Sequence[Request]], None]] = {
    "fit_returns_self": check_fit_returns_self,
    "no_history_items": check_no_history_items,
    "deterministic": check_deterministic,
    "batch_equals_single": check_batch_equals_single,
    "empty_history": check_empty_history,
    "stats_json": check_stats_json,
    "pickles": check_pickles,
    "probed_input_positions": check_probed_input_positions,
    "config_unchanged": check_config_unchanged,
    "unfitted_raises": check_unfitted_raises,
    "head_permutes": check_head_permutes,
    "call_leaves_stage": check_call_leaves_stage,
}


def check_stage(config: StageConfig, train: Interactions, catalog: Catalog, split: Split,
                requests: Sequence[Request], llm: LLM | None = None) -> None:  # fmt: skip
    """Run every check of the contract on ``config``'s stage."""
    h = Harness(config, train, catalog, split, llm)
    for check in CHECKS.values():
        check(h, train, requests)
