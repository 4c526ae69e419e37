"""`recfunnel diagnose` pieces with a scripted model: calibration, the position probe,
exposure concentration, comparisons, config checks. The whole command runs against the
real model in tests/integration/test_diagnose_real.py."""

import numpy as np
import pytest

from recfunnel.core.candidates import CandidateBatch, shuffled_head
from recfunnel.core.errors import ConfigError
from recfunnel.core.metrics import evaluate
from recfunnel.core.types import EvalSet
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.evaluate.config import DiagnoseConfig
from recfunnel.evaluate.config import parse_experiment as parse_config
from recfunnel.evaluate.diagnose import comparisons
from recfunnel.evaluate.diagnostics import concentration
from recfunnel.evaluate.probes import position_probe
from recfunnel.evaluate.runner import ExperimentResult, RunResult
from recfunnel.pipeline import Funnel, Shared, builtin_pipeline, calibration_set, rows_with_target
from recfunnel.stages.rerank.llm import Calibration
from scripted import ScriptedLLM


def test_concentration_by_hand():
    c = concentration(np.array([0, 5, 0, 3, 2]), points=5)
    k, share = c["concentration"]["k"], c["concentration"]["share"]
    assert dict(zip(k, share, strict=True))[1] == 0.5  # the most-shown item: 5 of 10 slots
    assert dict(zip(k, share, strict=True))[3] == 1.0  # three items take every slot
    x, y = c["lorenz"]["x"], c["lorenz"]["y"]
    assert (x[0], y[0], x[-1], y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert dict(zip(x, y, strict=True))[0.4] == 0.0  # the 2 of 5 items never shown: 0 slots
    assert np.all(np.diff(y) >= 0)


def test_shuffled_head_permutes_only_the_head():
    items = np.arange(12).reshape(2, 6)
    b = CandidateBatch(items, -np.arange(6.0)[None].repeat(2, 0), "fuse:rrf")
    s = shuffled_head(b, 4, seed=3)
    for r in range(2):
        assert sorted(s.items[r, :4]) == sorted(items[r, :4])
        assert s.items[r, 4:].tolist() == items[r, 4:].tolist()
    assert not np.array_equal(s.items[:, :4], items[:, :4])
    # only the listing moves: each item keeps its rank in the input batch
    ranks = s.extras["prev_rank"]
    assert (np.take_along_axis(items, ranks, axis=1) == s.items).all()
    assert ranks[:, 4:].tolist() == [[4, 5], [4, 5]]


@pytest.fixture(scope="module")
def split(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    return data, cold_start(data, seed=0, n_users=30, n_valid=40)


def llm_funnel(data, split, llm, **rerank):
    """hybrid → verbalizer (top 10) with a scripted model in place of the real one."""
    cfg = builtin_pipeline("hybrid+llm-verbalizer")
    rr = cfg.stages[-1].model_copy(update={"top_n": 10, **rerank})
    cfg = cfg.model_copy(update={"stages": [*cfg.stages[:-1], rr]})
    return Funnel(cfg, seed=0, shared=Shared.with_llm(llm)).fit(split.train, data.catalog)


def reverse_order(prompt, options):
    """Prefers the last-listed candidate: undoes whatever the ranker knew."""
    return np.arange(len(options), dtype=float)


def test_calibration_fits_blend_on_validation_users_only(split):
    data, sp = split
    llm = ScriptedLLM(logprobs=reverse_order)
    f = llm_funnel(data, sp, llm, calibration=Calibration(users=None))
    cal = f.tune(sp)["rerank:verbalizer"]
    assert len(llm.prompts) == len(sp.valid)  # one LLM pass; the grid reuses its answers
    assert cal["n_users"] == len(sp.valid)
    best = max(cal["grid"].values())
    assert cal["grid"][str(cal["blend"])] == best
    # reversing the hybrid order hurts, so the fitted weight leans on the hybrid rank
    assert cal["blend"] >= 0.5 and cal["grid"]["0.0"] < best
    assert f.stage("rerank:verbalizer").blend_ == cal["blend"]
    # the test pass uses the fitted weight: the same answers as a stage configured with it
    res = f.run(sp.test.requests, 10)
    fixed = llm_funnel(data, sp, ScriptedLLM(logprobs=reverse_order), blend=cal["blend"])
    np.testing.assert_array_equal(res.final.items, fixed.run(sp.test.requests, 10).final.items)
    # and its config is still what was asked for: calibration, the configured blend of 0
    assert f.stage("rerank:verbalizer").config.blend == 0.0


def test_calibration_keeps_a_useful_llm(split):
    data, sp = split
    liked = {int(i) for t in sp.valid.truth for i in t}
    titles = {str(data.catalog.titles[i])[:40] for i in liked}

    def oracle(prompt, options):  # knows the validation truth: the LLM is worth trusting
        lines = [ln for ln in prompt.splitlines() if ln[1:3] == ". "]
        hit = [any(t in ln for t in titles) for ln in lines][: len(options)]
        return np.array([0.0 if h else -5.0 for h in hit] + [-9.0] * (len(options) - len(hit)))

    f = llm_funnel(data, sp, ScriptedLLM(logprobs=oracle), calibration=Calibration(users=None))
    cal = f.tune(sp)["rerank:verbalizer"]
    assert cal["blend"] < 0.5 and cal["grid"]["0.0"] > cal["grid"]["1.0"]


def test_calibration_needs_validation_users(split):
    data, sp = split
    with pytest.raises(ConfigError, match="n_valid"):
        calibration_set(None, 10, 0)
    sample = calibration_set(sp.valid, 7, 0)
    assert len(sample) == 7 and {r.user for r in sample.requests} <= {
        r.user for r in sp.valid.requests
    }
    llm = ScriptedLLM(logprobs=reverse_order)
    f = llm_funnel(data, sp, llm)
    assert f.tune(sp) == {} and not llm.prompts  # no calibration section: nothing to learn


def prefers_first_slot(prompt, options):
    return -np.arange(len(options), dtype=float)


def prefers_high_ids(prompt, options):
    """A content signal: ranks by the item's id, wherever it is listed."""
    lines = [ln for ln in prompt.splitlines() if ln[1:3] == ". "][: len(options)]
    ids = [sum(map(ord, ln[3:])) for ln in lines]  # any fixed function of the title
    return np.array(ids + [0] * (len(options) - len(ids)), dtype=float)


def test_position_probe_separates_bias_from_content(split):
    data, sp = split
    probe = position_probe(users=20)
    biased = llm_funnel(data, sp, ScriptedLLM(logprobs=prefers_first_slot))
    p = probe(biased, sp, biased.run(sp.test.requests, 10))
    assert p["n_users"] == 20 and p["stage"] == "rerank:verbalizer"
    assert p["top10_change"] == 0.0  # the same 10 candidates either way…
    assert p["top1_change"] > 0.5  # …but the top slot follows the shuffle
    assert p["position_corr_shuffled"] == pytest.approx(1.0)
    # it keeps the input order as given, so it scores exactly the input order's NDCG
    assert p["ndcg@10_probe_users"] == pytest.approx(p["ndcg@10_input_order"])
    assert len(p["per_user"]["shuffled"]) == len(p["per_user"]["input_order"]) == 20
    # blended fully with the ranker's rank, shuffling the listing changes nothing
    prior = llm_funnel(data, sp, ScriptedLLM(logprobs=prefers_first_slot), blend=1.0)
    b = probe(prior, sp, prior.run(sp.test.requests, 10))
    assert b["top1_change"] == 0.0 and abs(b["position_corr_shuffled"]) < 0.3
    assert b["ndcg@10_shuffled"] == pytest.approx(b["ndcg@10_input_order"])
    reading = llm_funnel(data, sp, ScriptedLLM(logprobs=prefers_high_ids))
    q = probe(reading, sp, reading.run(sp.test.requests, 10))
    assert q["top1_change"] == 0.0 and abs(q["position_corr_shuffled"]) < 0.3
    no_llm = Funnel(builtin_pipeline("popularity")).fit(sp.train, data.catalog)
    assert probe(no_llm, sp, no_llm.run(sp.test.requests, 10)) == {}


def _run(name, seed, per_user):
    return RunResult(name, seed, {"ndcg@10": float(per_user.mean())}, {}, len(per_user), {},
                     per_user={"ndcg@10": per_user})  # fmt: skip


def test_comparisons_pair_users_and_seeds_with_holm():
    rng = np.random.default_rng(0)
    runs = []
    for seed in range(3):
        base = rng.random(50)
        better = base + rng.normal(0.05, 0.01, 50)
        runs += [_run("popularity", seed, base), _run("better", seed, better),
                 _run("same", seed, base.copy())]  # fmt: skip
    cfg = parse_config({"pipelines": ["popularity", "cf", "hybrid"],
                        "diagnose": {"test_metrics": ["ndcg@10"], "compare": [["cf", "hybrid"]]}},
                       DiagnoseConfig)  # fmt: skip
    cfg = cfg.model_copy(update={"pipelines": [
        builtin_pipeline("popularity").model_copy(update={"name": n})
        for n in ("popularity", "better", "same")]})  # fmt: skip
    cfg.diagnose.compare = [("better", "same")]
    result = ExperimentResult("x", "cold-start", {}, [0, 1, 2], runs)
    rows = {(r["pipeline"], r["reference"], r["over"]): r for r in comparisons(result, cfg)}
    better = rows[("better", "popularity", "users")]
    assert better["n"] == 150 and better["mean_diff"] == pytest.approx(0.05, abs=0.005)
    assert better["p_value"] < 1e-6 and better["p_holm"] >= better["p_value"]
    assert better["p_holm"] == pytest.approx(min(1.0, 2 * better["p_value"]))  # 2 tests
    assert rows[("same", "popularity", "users")]["p_value"] == 1.0
    assert rows[("better", "popularity", "seeds")]["n"] == 3
    assert rows[("better", "same", "users")]["family"] == "extra"


@pytest.mark.parametrize(
    ("diagnose", "where"),
    [
        ({"baseline": "nope"}, "diagnose.baseline"),
        ({"compare": [["cf", "nope"]]}, "diagnose.compare.0"),
        ({"sweep": {"pipeline": "cf"}}, "has no rerank stage"),
        ({"test_metrics": ["mrr@5"]}, "diagnose.test_metrics"),
        ({"price_prompt": -1}, "diagnose.price_prompt"),
        ({"sweep": {"pipeline": "cf", "pool_sizes": [1]}}, "pool sizes"),
    ],
)
def test_diagnose_config_errors_name_the_field(diagnose, where):
    with pytest.raises(ConfigError, match=where):
        parse_config({"pipelines": ["popularity", "cf"], "diagnose": diagnose}, DiagnoseConfig)


def test_calibration_config_is_checked():
    with pytest.raises(ValueError, match="grid"):
        Calibration(grid=[0.5, 1.5])
    with pytest.raises(ValueError, match="metric"):
        Calibration(metric="bogus@10")


def test_eval_metric_helper_agrees(split):
    """Sanity for the tests above: reversing a ranker's head lowers its NDCG here."""
    data, sp = split
    f = Funnel(builtin_pipeline("hybrid")).fit(sp.train, data.catalog)
    items = f.run(sp.valid.requests, 10).final.items
    valid = EvalSet(sp.valid.requests, sp.valid.truth)
    fwd = evaluate(items, valid.truth, ["ndcg@10"], data.catalog.n_items).means["ndcg@10"]
    rev = evaluate(items[:, ::-1], valid.truth, ["ndcg@10"], data.catalog.n_items)
    assert rev.means["ndcg@10"] < fwd


def test_rerank_only_target_rows_keeps_every_accuracy_metric(split):
    """LlamaRec's evaluation: rerank only users with a relevant item in the reranker's input.
    Accuracy must equal reranking everyone, with fewer LLM calls."""
    data, sp = split
    full_llm, some_llm = ScriptedLLM(logprobs=reverse_order), ScriptedLLM(logprobs=reverse_order)
    full = llm_funnel(data, sp, full_llm).run(sp.test.requests, 50)
    some = llm_funnel(data, sp, some_llm).run(sp.test.requests, 50, rows=rows_with_target(sp.test))
    names = ["ndcg@10", "hr@10", "mrr@10", "recall@50"]
    a = evaluate(full.final.items, sp.test.truth, names, data.catalog.n_items)
    b = evaluate(some.final.items, sp.test.truth, names, data.catalog.n_items)
    for m in names:
        assert np.array_equal(a.per_user[m], b.per_user[m]), m
    given = full.inputs["rerank:verbalizer"]
    head = CandidateBatch(given.items[:, :10], given.scores[:, :10], "h")
    hit = rows_with_target(sp.test)(sp.test.requests, head)
    assert 0 < hit.sum() < len(hit)
    assert len(some_llm.prompts) == hit.sum() < len(full_llm.prompts) == len(hit)
    stage = some.batches["rerank:verbalizer"]
    assert np.isnan(stage.extras["llm_score"][~hit]).all()
    assert not np.isnan(stage.extras["llm_score"][hit, 0]).any()
    # rows left alone keep the ranker's order
    assert np.array_equal(stage.items[~hit], some.inputs["rerank:verbalizer"].items[~hit, :10])


def test_reranking_some_rows_reports_latency_for_every_row(split):
    """rerank_users = "target-in-input": the LLM's per-row seconds cover the reranked rows
    only; the funnel spreads them over all rows (0 for the rest), so per-user latency has
    one value per user (a diagnose run with it used to crash on the shape)."""
    data, sp = split
    llm = ScriptedLLM(logprobs=reverse_order)
    f = llm_funnel(data, sp, llm)
    mask = np.zeros(len(sp.test), dtype=bool)
    mask[[1, 4, 7]] = True
    res = f.run(sp.test.requests, 10, rows=lambda reqs, head: mask)
    secs = res.stats["rerank:verbalizer"].row_seconds
    assert len(secs) == len(sp.test) and len(llm.prompts) == 3
    assert np.all(secs[~mask] == 0)


def test_a_diagnosis_without_llm_stages_renders(shared_data, tmp_path):
    """Classical rerankers are probed for position bias but have no LLM figures (invalid
    outputs, fallbacks): the report shows '–' for those, not a template error (the
    beyond-accuracy table's `recfunnel reproduce aspects-classical` failed on this)."""
    from recfunnel.data import load_dataset
    from recfunnel.evaluate.config import DiagnoseConfig
    from recfunnel.evaluate.diagnose import diagnose
    from recfunnel.evaluate.report import write_report

    cfg = DiagnoseConfig.model_validate({
        "dataset": "ml-latest-small", "data_dir": str(shared_data), "seeds": 1,
        "metrics": ["hr@10", "ndcg@10", "alpha_ndcg@10"],
        "protocol": {"name": "leave-last-out", "n_users": 20},
        "diagnose": {"baseline": "mf", "test_metrics": ["ndcg@10"], "position_users": 3},
        "pipelines": [
            {"name": "mf", "stages": [{"kind": "cf", "model": "als"}]},
            {"name": "mf+mmr", "stages": [{"kind": "cf", "model": "als"},
                                          {"kind": "mmr", "top_n": 20}]},
        ],
    })  # fmt: skip
    d = diagnose(cfg, dataset=load_dataset("ml-latest-small", shared_data))
    mmr = next(p for p in d["pipelines"] if p["name"] == "mf+mmr")["stages"]
    assert any("position_corr" in v and "invalid_rate" not in v for v in mmr.values())
    html = write_report(d, tmp_path).read_text()
    assert "mf+mmr" in html
