"""Routing: thresholds respected, the threshold chosen on validation, buckets reported."""

import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.core.metrics import evaluate
from recfunnel.core.types import Request
from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.evaluate.buckets import BUCKETS, bucket_of, by_history
from recfunnel.evaluate.config import parse_experiment as parse_config
from recfunnel.evaluate.runner import run_experiment
from recfunnel.pipeline import Funnel, Router


def test_buckets_by_hand():
    assert bucket_of(np.array([0, 5, 6, 20, 21, 50, 51, 999])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    per_user = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0])}
    got = by_history(per_user, np.array([1, 3, 30, 100]))
    assert got["0–5"] == {"n": 2.0, "hr@10": 0.5}
    assert got["6–20"]["n"] == 0.0 and np.isnan(got["6–20"]["hr@10"])
    assert sum(v["n"] for v in got.values()) == 4 and len(got) == len(BUCKETS)


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    return data, cold_start(data, seed=0, n_users=120, n_valid=120, history=0, history_max=200)


def test_mixed_history_split(setup):
    data, split = setup
    lengths = np.array([len(r.history) for r in split.test.requests])
    assert lengths.min() >= 0 and lengths.max() <= 200
    assert len(np.unique(bucket_of(lengths))) == 4  # every bucket is populated
    again = cold_start(data, seed=0, n_users=120, n_valid=120, history=0, history_max=200)
    assert [len(r.history) for r in again.test.requests] == lengths.tolist()
    with pytest.raises(ConfigError, match="history_max"):
        cold_start(data, seed=0, history=10, history_max=5)


def routed(threshold=None, cold="popularity", warm="cf"):
    cfg = parse_config({"pipelines": [
        {"name": "r", "route": {"cold": cold, "warm": warm, "threshold": threshold}}]})  # fmt: skip
    return cfg.pipelines[0]


def test_threshold_is_respected(setup):
    data, split = setup
    f = Router(routed(threshold=5), seed=0).fit(split.train, data.catalog)
    reqs = split.test.requests
    out = f.run(reqs, 10)
    pop = Funnel(routed().route.cold).fit(split.train, data.catalog).run(reqs, 10)
    cf = Funnel(routed().route.warm).fit(split.train, data.catalog).run(reqs, 10)
    lengths = np.array([len(r.history) for r in reqs])
    cold = lengths <= 5
    assert cold.any() and (~cold).any()
    np.testing.assert_array_equal(out.final.items[cold], pop.final.items[cold])
    np.testing.assert_array_equal(out.final.items[~cold], cf.final.items[~cold])
    assert out.stats["route"].figures()["cold_share"] == pytest.approx(cold.mean())
    # free text sends a warm user down the cold path
    warm_req = reqs[int(np.flatnonzero(~cold)[0])]
    asked = Request(warm_req.user, warm_req.history, query="something light")
    assert f.is_cold([warm_req, asked]).tolist() == [False, True]


def test_threshold_chosen_on_validation(setup):
    data, split = setup
    f = Router(routed(), seed=0).fit(split.train, data.catalog)
    with pytest.raises(RuntimeError, match="threshold"):
        f.run(split.test.requests[:2], 10)
    f.catalog_ = data.catalog
    info = f.choose_threshold(split.valid)
    # the routed NDCG@10 of each threshold, from the two paths' own per-user figures
    n = data.catalog.n_items
    pop = Funnel(routed().route.cold).fit(split.train, data.catalog).run(split.valid.requests, 10)
    cf = Funnel(routed().route.warm).fit(split.train, data.catalog).run(split.valid.requests, 10)
    a = evaluate(pop.final.items, split.valid.truth, ["ndcg@10"], n).per_user["ndcg@10"]
    b = evaluate(cf.final.items, split.valid.truth, ["ndcg@10"], n).per_user["ndcg@10"]
    lengths = np.array([len(r.history) for r in split.valid.requests])
    for t in (0, 5, 20, 200):
        want = float(np.where(lengths <= t, a, b).mean())
        assert info["grid"][str(t)] == pytest.approx(want)
    assert a.mean() != b.mean()  # the paths differ, so the choice means something
    best = max(info["grid"].values())
    assert info["threshold"] == f.threshold_
    assert info["grid"][str(info["threshold"])] == best
    assert info["n_users"] == len(split.valid)


def test_tied_thresholds_take_the_fewest_cold_requests(setup):
    """Equal paths tie every threshold: the smallest wins whatever order the grid is in."""
    data, split = setup
    cfg = parse_config({"pipelines": [{"name": "r", "route": {
        "cold": "popularity", "warm": "popularity", "thresholds": [200, 0, 5]}}]})  # fmt: skip
    f = Router(cfg.pipelines[0], seed=0).fit(split.train, data.catalog)
    info = f.choose_threshold(split.valid)
    assert len(set(info["grid"].values())) == 1
    assert info["threshold"] == 0


def test_runner_reports_buckets_and_winners(shared_data):
    cfg = parse_config({
        "dataset": "ml-latest-small", "data_dir": str(shared_data), "seeds": 1,
        "metrics": ["hr@10", "ndcg@10"],
        "protocol": {"name": "cold-start", "n_users": 80, "n_valid": 80, "history": 0,
                     "history_max": 200},
        "pipelines": ["popularity", "cf",
                      {"name": "routed", "route": {"cold": "popularity", "warm": "cf"}}],
    })  # fmt: skip
    res = run_experiment(cfg)
    routed_run = res.results[2]
    assert "threshold" in routed_run.tuned["route"]
    table = res.to_json()["by_history"]
    assert set(table["buckets"]) == {"popularity", "cf", "routed"}
    assert sum(row["n"] for row in table["buckets"]["cf"].values()) == 80
    for bucket, winner in table["winner"]["ndcg@10"].items():
        best = max(v[bucket]["ndcg@10"] for v in table["buckets"].values())
        assert table["buckets"][winner][bucket]["ndcg@10"] == best


def test_eval_cli_prints_buckets_and_plots(shared_data, tmp_path):
    from typer.testing import CliRunner

    from recfunnel.cli import app

    cfg = tmp_path / "routing.toml"
    cfg.write_text(
        'dataset = "ml-latest-small"\nseeds = 1\nmetrics = ["ndcg@10"]\n'
        '[protocol]\nname = "cold-start"\nn_users = 60\nn_valid = 60\nhistory = 0\n'
        "history_max = 200\n"
        '[[pipelines]]\nname = "popularity"\nstages = [{ kind = "popularity" }]\n'
        '[[pipelines]]\nname = "routed"\nroute = { cold = "popularity", warm = "cf" }\n'
    )
    png = tmp_path / "buckets.png"
    res = CliRunner().invoke(app, ["eval", "--config", str(cfg), "--data-dir", str(shared_data),
                                   "--by-history", "--plot", str(png)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "by history length" in res.output and "51+" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_json_is_strict_when_a_bucket_is_empty(shared_data, tmp_path):
    """Leave-last-out users all have long histories: the short buckets are empty, and
    their undefined means must be null in the JSON, not NaN (which JSON does not have)."""
    import json

    from typer.testing import CliRunner

    from recfunnel.cli import app

    out = tmp_path / "r.json"
    args = ["eval", "--dataset", "ml-latest-small", "--data-dir", str(shared_data),
            "--protocol", "leave-last-out", "--pipelines", "popularity", "--users", "20",
            "--seeds", "1", "--metrics", "ndcg@10", "--json", str(out), "--quiet"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output

    def refuse(name):
        raise AssertionError(f"{name} in the results JSON")

    got = json.loads(out.read_text(), parse_constant=refuse)
    empty = got["by_history"]["buckets"]["popularity"]["0–5"]
    assert empty["n"] == 0 and empty["ndcg@10"] is None
