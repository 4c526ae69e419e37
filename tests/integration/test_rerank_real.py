"""Every reranker against the real bundled SmolLM2-135M, in-process and over HTTP.

Checks behaviour, not quality (a 135M model may not beat its input order): outputs are
permutations of the head, costs are counted, reruns come from the cache, and a server that
goes away mid-run leaves requests on the previous stage's order, counted.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from recfunnel.cli import app
from recfunnel.config import builtin_pipeline
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.funnel import Funnel
from recfunnel.llm.base import LLMConfig
from recfunnel.llm.models import resolve_gguf
from servers import start_server, stop_server

pytestmark = pytest.mark.slow
TOP_N = 6


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    return data, cold_start(data, seed=0, n_users=3)


def pipeline(method: str, **rerank):
    cfg = builtin_pipeline(f"hybrid+llm-{method}")
    rr = cfg.rerank.model_copy(update={"top_n": TOP_N, **rerank})
    return cfg.model_copy(update={"rerank": rr})


@pytest.mark.parametrize("method", ["verbalizer", "permutation", "pointwise"])
def test_each_reranker_on_the_real_model(setup, method):
    data, split = setup
    shared: dict = {}
    f = Funnel(pipeline(method), seed=0, fitted=shared).fit(split.train, data.catalog)
    res = f.run(split.test.requests, 20)
    stage = f"rerank:{method}"
    head, out = res.trace["fuse:rrf"].items[:, :TOP_N], res.trace[stage].items
    for a, b in zip(head, out, strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())  # a permutation of its input
    stats = res.stats[stage]
    expected_calls = {"verbalizer": 1, "permutation": 1, "pointwise": TOP_N}[method]
    assert stats["llm_calls_per_user"] == expected_calls
    assert stats["prompt_tokens_per_user"] > 100
    assert 0.0 <= stats["invalid_rate"] <= 1.0 and stats["fallback_rate"] == 0.0
    assert np.isfinite(res.trace[stage].extras["llm_score"][:, :TOP_N]).all()
    # a rerun is served from the cache and gives the same ranking
    again = Funnel(pipeline(method), seed=0, fitted=shared).fit(split.train, data.catalog)
    res2 = again.run(split.test.requests, 20)
    np.testing.assert_array_equal(res2.trace[stage].items, out)
    assert res2.stats[stage]["cache_hits"] == res2.stats[stage]["llm_calls"]


def test_verbalizer_scores_are_label_logprobs(setup):
    data, split = setup
    f = Funnel(pipeline("verbalizer"), seed=0, fitted={}).fit(split.train, data.catalog)
    s = f.run(split.test.requests, 20).trace["rerank:verbalizer"].extras["llm_score"]
    assert (s <= 0).all() and (np.exp(s).sum(axis=1) <= 1.0 + 1e-6).all()


def test_shuffles_report_agreement(setup):
    data, split = setup
    f = Funnel(pipeline("verbalizer", shuffles=3), seed=0, fitted={}).fit(split.train, data.catalog)
    res = f.run(split.test.requests[:2], 20)
    stats = res.stats["rerank:verbalizer"]
    assert stats["llm_calls_per_user"] == 3
    assert -1.0 <= stats["order_agreement"] <= 1.0


def test_server_stopped_mid_run_falls_back_and_counts(setup, tmp_path):
    data, split = setup
    proc, url = start_server(resolve_gguf("smollm2-135m"), tmp_path / "server.log")
    try:
        llm = LLMConfig(backend="openai", base_url=url, model="smollm2-135m", retries=1,
                        timeout_s=20, cache=False)  # fmt: skip
        cfg = pipeline("verbalizer")
        cfg = cfg.model_copy(update={"rerank": cfg.rerank.model_copy(update={"llm": llm})})
        f = Funnel(cfg, seed=0, fitted={}).fit(split.train, data.catalog)
        ok = f.run(split.test.requests[:1], 20)
        assert ok.stats["rerank:verbalizer"]["fallback_rate"] == 0.0
    finally:
        stop_server(proc)
    res = f.run(split.test.requests, 20)  # the server is gone
    stats = res.stats["rerank:verbalizer"]
    assert stats["fallback_rate"] == 1.0 and stats["llm_errors"] >= 1
    fused = res.trace["fuse:rrf"].items
    np.testing.assert_array_equal(res.final.items, fused[:, :20])  # previous order kept


def test_cli_reports_llm_costs(setup, shared_data, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_DATA", str(shared_data))
    res = CliRunner().invoke(
        app,
        ["eval", "--pipelines", "hybrid+llm-verbalizer", "--users", "2", "--seeds", "1",
         "--top-n", "5", "--backend", "llamacpp", "--model", "smollm2-135m",
         "--metrics", "hr@10,ndcg@10", "--json", "-", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["results"][0]["metrics"]
    assert m["llm_calls_per_user"] == 1.0 and m["prompt_tokens_per_user"] > 100
    assert {"latency_ms_per_user", "completion_tokens_per_user", "invalid_rate"} <= set(m)


def test_goal_graph_walks_on_the_real_model(setup):
    """LLM4Rerank's walk with SmolLM2: every answer is parsed strictly, re-asked once when
    invalid, every step is traced, and the output is a permutation of the head."""
    data, split = setup
    cfg = builtin_pipeline("mf+llm-goal")
    cfg = cfg.model_copy(update={"rerank": cfg.rerank.model_copy(
        update={"top_n": TOP_N, "goal": "accuracy+diversity", "max_visits": 3})})  # fmt: skip
    f = Funnel(cfg, seed=0).fit(split.train, data.catalog)
    res = f.run(split.test.requests, 20)
    head, out = res.trace["retrieve:cf"].items[:, :TOP_N], res.trace["rerank:goal"].items
    for a, b in zip(head, out, strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())
    s = res.stats["rerank:goal"]
    traces = f.reranker_.traces_
    assert len(traces) == len(split.test) and all(len(t) >= 1 for t in traces)
    asked = sum(1 for t in traces for step in t if "answer" in step)
    continued = sum(1 for t in traces for step in t if step.get("continued"))
    # one call per traced answer (asks and re-asks), one more per answer continued at "Next:"
    assert s["llm_calls"] == asked + continued
    assert s["continued_rate"] == pytest.approx(continued / asked)
    invalid = sum(1 for t in traces for step in t if step.get("errors"))
    assert s["invalid_rate"] == pytest.approx(invalid / asked)
    # rows whose walk produced nothing valid keep the ranker's order, flagged
    fb = res.trace["rerank:goal"].fallback
    np.testing.assert_array_equal(out[fb], head[fb])
    assert s["visits_per_user"] <= 3


def test_explanations_on_the_real_model(setup):
    """SmolLM2 explains the top items: every shown reason is grounded (an LLM one passed
    the check, else it is a template), the sources add up, and the calls are counted."""
    from recfunnel.explain import ExplainConfig, grounding_errors

    data, split = setup
    cfg = builtin_pipeline("hybrid").model_copy(update={"explain": ExplainConfig(top_k=3)})
    f = Funnel(cfg, seed=0).fit(split.train, data.catalog)
    res = f.run(split.test.requests, 10)
    assert res.explanations is not None and len(res.explanations) == len(split.test)
    s = res.stats["explain"]
    assert s["explained"] == 3 * len(split.test)
    assert s["llm_rate"] + s["regenerated_rate"] + s["template_rate"] == pytest.approx(1.0)
    asked = 3 * len(split.test) + round(s["first_rejected_rate"] * s["explained"])
    assert s["llm_calls"] == asked  # one ask per item, one more per rejected answer
    for req, row, reasons in zip(split.test.requests, res.final.items, res.explanations,
                                 strict=True):  # fmt: skip
        assert [e.item for e in reasons] == row[:3].tolist()
        for e in reasons:
            assert e.text.startswith("Because you liked") or e.source == "template"
            if e.source != "template":
                assert not grounding_errors(e.text, f.explainer_.index_, req.history, row)
