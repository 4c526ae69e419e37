"""`recfunnel diagnose` end to end with the real bundled model: the JSON validates against
its schema and agrees with `eval`'s numbers, and the HTML report renders in headless
Chromium with every plot decoded."""

import copy
import json
import re
import subprocess

import jsonschema
import pytest
from typer.testing import CliRunner

from browser import chromium
from recfunnel.cli import app
from recfunnel.evaluate.diagnose import schema

pytestmark = pytest.mark.slow

CONFIG = """
dataset = "ml-latest-small"
seeds = 2
metrics = ["hr@10", "ndcg@10", "recall@50", "unique@10"]

[protocol]
name = "cold-start"
n_users = 8
history = 5
n_valid = 6

[diagnose]
compare = [["hybrid+llm+cal", "embedding+llm"]]
position_users = 4
bootstrap = 200
sweep = { pipeline = "embedding+llm", pool_sizes = [4, 8], users = 4 }

[[pipelines]]
name = "popularity"
pool_size = 1000
stages = [{ kind = "popularity" }]

[[pipelines]]
name = "embedding+llm"
stages = [{ kind = "content" }, { kind = "verbalizer", top_n = 8 }]

[[pipelines]]
name = "hybrid+llm+cal"
stages = [
  { kind = "cf" }, { kind = "content" }, { kind = "popularity" }, { kind = "fuse" },
  { kind = "verbalizer", top_n = 8, calibration = { users = 6, grid = [0.0, 0.5, 1.0] } },
]
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("diagnose")
    cfg = tmp / "diagnose.toml"
    cfg.write_text(CONFIG)
    out = tmp / "report"
    res = CliRunner().invoke(
        app,
        [
            "diagnose",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--data-dir",
            str(shared_data),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "diagnosis.json").read_text())


def test_diagnosis_json_matches_schema_and_numbers(report):
    _out, d = report
    jsonschema.validate(d, schema())
    assert d["seeds"] == [0, 1] and d["n_users"] == [8, 8] and d["baseline"] == "popularity"
    pipes = {p["name"]: p for p in d["pipelines"]}
    pop = pipes["popularity"]["stages"]["retrieve:popularity"]
    assert pop["unique@1"] == 1.0  # popularity shows everyone the same top item
    # a stage's own pool recall is the same number `eval` reports for that ranking
    assert pop["recall@50"] == pytest.approx(pipes["popularity"]["metrics"]["recall@50"]["mean"])
    rr = pipes["embedding+llm"]["stages"]["rerank:verbalizer"]
    assert rr["depth"] == 8 and rr["position_corr"] is not None
    # shuffling 8 candidates only reorders them: the top 10 keeps the same items
    assert rr["top10_change"] == 0.0 and rr["invalid_rate"] == 0.0
    cost = pipes["embedding+llm"]["cost"]
    assert cost["llm_calls_per_user"] == 1.0 and cost["prompt_tokens_per_user"] > 100
    assert cost["latency_ms_p95"] >= cost["latency_ms_p50"] > 0 and cost["cached_share"] == 0
    for p in d["pipelines"]:  # a replayed answer's compute time is never shown as a speed
        assert (p["cost"]["latency_ms_p50"] is None) == (p["cost"]["cached_share"] > 0), p["name"]
    assert cost["cost_per_1000"] == pytest.approx(
        1000 * cost["prompt_tokens_per_user"] * 0.15 / 1e6, rel=1e-9
    )
    assert pipes["popularity"]["cost"]["cost_per_1000"] == 0.0
    cal = pipes["hybrid+llm+cal"]["calibration"]
    assert len(cal) == 2 and all(c["blend"] in (0.0, 0.5, 1.0) for c in cal)
    tests = {(c["pipeline"], c["reference"], c["over"]) for c in d["comparisons"]}
    assert ("embedding+llm", "popularity", "users") in tests
    assert ("hybrid+llm+cal", "embedding+llm", "seeds") in tests
    sweep = d["mitigations"]["pool_sweep"]
    assert [r["pool"] for r in sweep["rows"]] == [4, 8]
    assert sweep["rows"][1]["pool_recall"] >= sweep["rows"][0]["pool_recall"]
    assert sweep["rows"][1]["prompt_tokens_per_user"] > sweep["rows"][0]["prompt_tokens_per_user"]


def test_schema_rejects_a_stage_without_discrimination(report):
    _, d = report
    broken = copy.deepcopy(d)
    del broken["pipelines"][0]["stages"]["retrieve:popularity"]["cohen_d"]
    with pytest.raises(jsonschema.ValidationError, match="cohen_d"):
        jsonschema.validate(broken, schema())


def test_report_renders_in_headless_chromium(report):
    out, _ = report
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "headline.png", "lorenz.png", "pareto.png", "pool_sweep.png", "scores.png"]  # fmt: skip
    browser = chromium()
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    expected = re.search(r'data-plots-expected="(\d+)"', dom)
    loaded = re.search(r'data-plots-loaded="(\d+)"', dom)
    assert expected and loaded, dom[:500]
    assert int(expected.group(1)) == 5 and loaded.group(1) == expected.group(1)
    for section in ("Coverage", "Exposure", "Discrimination", "Position bias", "Cost",
                    "Significance", "Pool-size sweep"):  # fmt: skip
        assert section in dom


def test_render_only_redraws_and_missing_json_is_a_clear_error(report, tmp_path):
    out, _ = report
    before = (out / "index.html").read_text()
    (out / "index.html").unlink()
    res = CliRunner().invoke(app, ["diagnose", "--out", str(out), "--render-only", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "index.html").read_text() == before
    res = CliRunner().invoke(app, ["diagnose", "--out", str(tmp_path), "--render-only"])
    assert res.exit_code == 2 and "diagnosis.json does not exist" in " ".join(res.output.split())
