"""The Ray engine gives the local engine's results: same metrics, same per-stage figures.

Runs a real local Ray (2 CPUs, 2 actors) on ml-latest-small."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from recfunnel.cli import app
from recfunnel.data import load_dataset
from recfunnel.data.splits import make_split
from recfunnel.engine.ray import merge, shutdown
from recfunnel.evaluate.config import DiagnoseConfig
from recfunnel.evaluate.config import parse_experiment as parse_config
from recfunnel.evaluate.runner import run_experiment
from recfunnel.pipeline import build_pipeline

pytestmark = pytest.mark.slow
METRICS = ["hr@10", "ndcg@10", "mrr@10", "recall@200", "unique@10", "gini@10"]


@pytest.fixture(scope="module")
def movielens(shared_data):
    yield load_dataset("ml-latest-small", shared_data)
    shutdown()


def test_batches_merge_back_in_any_order(movielens):
    split = make_split(movielens, "cold-start", 0, n_users=30)
    pipe = parse_config({"pipelines": ["hybrid"]}).pipelines[0]
    f = build_pipeline(pipe, 0).fit(split.train, movielens.catalog)
    reqs = split.test.requests
    whole = f.run(reqs, 50)
    parts = [(np.arange(a, b), f.run(reqs[a:b], 50)) for a, b in ((20, 30), (0, 20))]
    back = merge(parts, reqs, 50)
    assert set(back.batches) == set(whole.batches)
    for name, batch in whole.batches.items():
        np.testing.assert_array_equal(back.batches[name].items, batch.items)
        np.testing.assert_allclose(back.batches[name].scores, batch.scores, rtol=1e-5)  # BLAS
    np.testing.assert_array_equal(back.final.items, whole.final.items)


def test_ray_engine_matches_local(movielens):
    base = {
        "protocol": {"name": "cold-start", "n_users": 40},
        "seeds": [0],
        "metrics": METRICS,
        "pipelines": ["popularity", "cf", "hybrid", {
            "name": "llm", "stages": [{"kind": "cf"}, {"kind": "popularity"}, {"kind": "fuse"},
                                      {"kind": "verbalizer", "top_n": 5}],
        }, {"name": "routed", "route": {"cold": "popularity", "warm": "cf", "threshold": 5}}],
    }  # fmt: skip
    local = run_experiment(parse_config(base), dataset=movielens)
    ray_cfg = parse_config({**base, "engine": {"kind": "ray", "actors": 2, "batch_size": 16}})
    remote = run_experiment(ray_cfg, dataset=movielens)
    for a, b in zip(local.results, remote.results, strict=True):
        assert a.pipeline == b.pipeline and a.n_users == b.n_users == 40
        for m in METRICS:
            assert a.metrics[m] == b.metrics[m], (a.pipeline, m)
        for key in ("llm_calls_per_user", "prompt_tokens_per_user", "invalid_rate"):
            assert a.metrics[key] == pytest.approx(b.metrics[key]), (a.pipeline, key)
        assert set(a.stages) == set(b.stages)
        for stage, figures in a.stages.items():
            for key in ("recall@10", "recall@50", "recall@200", "fallback_rate", "depth"):
                if key in figures:
                    assert figures[key] == pytest.approx(b.stages[stage][key]), (stage, key)
    calls = {r.pipeline: r.metrics["llm_calls_per_user"] for r in remote.results}
    assert calls["llm"] == 1.0 and calls["routed"] == 0.0


def test_cli_engine_ray(movielens, shared_data, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_DATA", str(shared_data))
    res = CliRunner().invoke(app, ["eval", "--engine", "ray", "--pipelines", "cf", "--users",
                                   "20", "--seeds", "1", "--json", "-", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["n_users"] == 20
    res = CliRunner().invoke(app, ["eval", "--engine", "spark", "--pipelines", "cf"])
    assert res.exit_code == 2 and "engine.kind" in res.output


def _without_clocks(obj):
    """A diagnosis with every wall-clock figure removed (they differ between any two runs)."""
    clock = ("latency", "seconds", "created", "timings", "fit_s", "run_s", "cost", "per_1000")
    if isinstance(obj, dict):
        return {k: _without_clocks(v) for k, v in obj.items() if not any(c in k for c in clock)}
    if isinstance(obj, list):
        return [_without_clocks(v) for v in obj]
    return obj


def test_diagnose_on_ray_matches_local(movielens):
    from recfunnel.evaluate.diagnose import diagnose as run_diagnosis

    base = {"protocol": {"name": "cold-start", "n_users": 25}, "seeds": [0, 1],
            "pipelines": ["popularity", "cf"], "diagnose": {"baseline": "popularity"}}  # fmt: skip
    local = run_diagnosis(parse_config(base, DiagnoseConfig), dataset=movielens)
    remote = run_diagnosis(
        parse_config({**base, "engine": {"kind": "ray", "batch_size": 10}}, DiagnoseConfig),
        dataset=movielens,
    )
    assert_same(_without_clocks(remote), _without_clocks(local), "diagnosis")


def assert_same(a, b, where):
    """Equal structure and strings; numbers to 1e-4. Scores are float32 sums whose last
    bits depend on the BLAS batch size, so score-derived figures (Cohen's d, AUC) move in
    the 6th digit; the order-based metrics are checked exactly above."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), where
        for k in b:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4, nan_ok=True), where
    else:
        assert a == b, where
