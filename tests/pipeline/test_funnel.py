"""What the funnel itself guarantees, for every stage: names, the head rule, input
positions, stats handed back by calls, and a clear error before fitting."""

from collections.abc import Sequence

import numpy as np
import pytest

import recfunnel.core.candidates as candidates
import recfunnel.evaluate.diagnostics as diagnostics
import recfunnel.testing as testing
from recfunnel.core.candidates import PAD, CandidateBatch, locate, permutes
from recfunnel.core.errors import NotFittedError, StageContractError
from recfunnel.core.types import Request
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.pipeline import Funnel, PipelineConfig, Shared
from recfunnel.stages.rerank.aspects import AspectConfig, AspectReranker
from recfunnel.stages.rerank.base import Reranker


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    return data, cold_start(data, seed=0, n_users=8, n_valid=10)


def pipeline(name: str, *stages: dict) -> PipelineConfig:
    return PipelineConfig.model_validate({"name": name, "pool_size": 30, "stages": list(stages)})


def test_locate_by_hand():
    within = np.array([[5, 7, 9, PAD], [1, 2, 3, 4]])
    items = np.array([[9, 5, 7, PAD], [4, 3, 2, 8]])
    assert locate(items, within).tolist() == [[2, 0, 1, -1], [3, 2, 1, -1]]
    assert permutes(np.array([[9, 5, 7, PAD]]), within[:1]).tolist() == [True]
    assert permutes(np.array([[9, 5, 6, PAD]]), within[:1]).tolist() == [False]
    assert permutes(items[:, :3], within).tolist() == [False, False]  # another shape


def test_a_shared_stage_takes_each_pipelines_own_name(setup):
    """Two pipelines fit one popularity model; each names it as it said (was: the first's)."""
    data, split = setup
    shared = Shared()
    a = Funnel(pipeline("a", {"kind": "popularity", "name": "pop-a"}), 0, shared)
    b = Funnel(pipeline("b", {"kind": "popularity", "name": "pop-b"}), 0, shared)
    a.fit(split.train, data.catalog)
    b.fit(split.train, data.catalog)
    assert len(shared.stages) == 1  # fitted once
    assert a.names_ == ["pop-a"] and b.names_ == ["pop-b"]
    ra, rb = a.run(split.test.requests, 10), b.run(split.test.requests, 10)
    assert list(rb.batches) == ["pop-b"] and b.stage("pop-b").name == "pop-b"
    np.testing.assert_array_equal(ra.final.items, rb.final.items)
    assert a.stage("pop-a").counts_ is b.stage("pop-b").counts_  # one model, two names


class Dropper(Reranker[AspectConfig]):
    """Breaks the head rule: puts an item of its own in place of the last candidate."""

    config_class = AspectConfig

    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        items = head.items.copy()
        items[:, -1] = 0 if items[0, -1] != 0 else 1
        return CandidateBatch(items, head.scores, self.name)


def test_the_funnel_refuses_a_head_stage_that_is_not_a_permutation(setup):
    data, split = setup
    f = Funnel(pipeline("p", {"kind": "popularity"}, {"kind": "mmr", "top_n": 10}))
    f.fit(split.train, data.catalog)
    f.stages_[-1] = Dropper(AspectConfig(kind="mmr", top_n=10)).fit(None)  # type: ignore[arg-type]
    with pytest.raises(StageContractError, match=r"'rerank:mmr' .* not a permutation of its head"):
        f.run(split.test.requests, 10)


def test_the_funnel_derives_input_positions_for_every_head_stage(setup):
    data, split = setup
    f = Funnel(pipeline("p", {"kind": "popularity"}, {"kind": "mmr", "top_n": 10}))
    trace = f.fit(split.train, data.catalog).run(split.test.requests, 10)
    out, given = trace.batches["rerank:mmr"], trace.inputs["rerank:mmr"]
    pos = out.extras["input_pos"]
    real = out.items != PAD
    assert (np.take_along_axis(given.items[:, :10], np.where(real, pos, 0), 1)[real]
            == out.items[real]).all()  # fmt: skip
    assert not (pos == np.arange(10)).all()  # MMR moved something: positions are not trivial


def test_unfitted_stages_and_pipelines_raise_a_typed_error(setup):
    data, split = setup
    with pytest.raises(NotFittedError, match="call fit"):
        Funnel(pipeline("p", {"kind": "popularity"})).run(split.test.requests, 10)
    f = Funnel(pipeline("p", {"kind": "popularity"}, {"kind": "mmr", "top_n": 10}))
    trace = f.fit(split.train, data.catalog).run_before("rerank:mmr", split.test.requests, 10)
    with pytest.raises(NotFittedError, match="rerank:mmr is not fitted"):
        AspectReranker(AspectConfig(kind="mmr"))(split.test.requests, trace)
    assert issubclass(NotFittedError, RuntimeError)  # callers that caught RuntimeError still do


def test_exposure_learns_its_weight_without_rewriting_its_config(setup):
    data, split = setup
    f = Funnel(pipeline("p", {"kind": "popularity"}, {"kind": "exposure", "top_n": 20}))
    f.fit(split.train, data.catalog)
    info = f.tune(split)["rerank:exposure"]
    stage = f.stage("rerank:exposure")
    assert stage.config.weight is None and stage.weight_ == info["weight"]  # type: ignore[attr-defined]


def test_dead_helpers_are_gone():
    """Nothing used them but their own tests (issue 32, defect 7)."""
    assert not hasattr(candidates, "Candidates")
    assert not hasattr(CandidateBatch, "row") and not hasattr(CandidateBatch, "from_rows")
    assert not hasattr(testing, "registered_kinds") and not hasattr(diagnostics, "lorenz")


def test_candidate_batch_names_the_shape_it_refuses():
    with pytest.raises(ValueError, match=r"must be 2-D .* shape \(3,\)"):
        CandidateBatch(np.arange(3), np.zeros(3), "x")
    with pytest.raises(ValueError, match=r"items \(1, 3\) and scores \(1, 2\) differ"):
        CandidateBatch(np.zeros((1, 3), int), np.zeros((1, 2)), "x")


def test_a_refit_fixes_what_tuning_chose(setup, monkeypatch):
    """The ranker's simulated lists refit the earlier stages: a tuned grid refits with its
    choice, not its first point (and the stage's own config keeps the grid)."""
    data, split = setup
    cf = {"kind": "cf", "model": "itemknn", "min_rating": ["all", 4.0], "tune_users": 10}
    f = Funnel(pipeline("p", cf, {"kind": "mmr", "top_n": 10})).fit(split.train, data.catalog)
    f.tune(split)
    stage = f.stages_[0]
    chosen = stage.params_["min_rating"]  # type: ignore[attr-defined]
    seen = []
    real = Funnel._fit_stages

    def spy(self, train, catalog, shared, configs=None):
        seen.append(configs)
        return real(self, train, catalog, shared, configs)

    monkeypatch.setattr(Funnel, "_fit_stages", spy)
    f._refit(split.train, upto=1)
    assert chosen == 4.0  # not the grid's first point, so the test tells them apart
    assert seen[0][0].min_rating == chosen and seen[0][0].model == "itemknn"
    assert stage.config.min_rating == [None, 4.0]
