"""The command line, run in-process with typer's runner on real data."""

import json

import pytest
from typer.testing import CliRunner

from recfunnel.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_DATA", str(shared_data))


def test_eval_writes_results_json(tmp_path):
    out = tmp_path / "out.json"
    res = runner.invoke(
        app,
        ["eval", "--dataset", "ml-latest-small", "--protocol", "cold-start",
         "--pipelines", "popularity,random,cf", "--seeds", "2", "--users", "30",
         "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["dataset"] == "ml-latest-small" and doc["protocol"] == "cold-start"
    assert len(doc["results"]) == 6
    first = doc["results"][0]
    assert first["pipeline"] == "popularity" and first["seed"] == 0 and first["n_users"] == 30
    assert {"hr@10", "ndcg@10", "recall@200", "unique@10", "gini@10"} <= set(first["metrics"])
    assert "retrieve:popularity" in first["stages"]
    by = {(r["pipeline"], r["seed"]): r["metrics"] for r in doc["results"]}
    assert by[("popularity", 0)]["hr@10"] > by[("random", 0)]["hr@10"]
    assert "popularity" in res.output and "±" in res.output  # the table


def test_eval_json_to_stdout_and_leave_last_out():
    res = runner.invoke(
        app,
        ["eval", "--protocol", "leave-last-out", "--pipelines", "popularity",
         "--seeds", "1", "--users", "25", "--metrics", "hr@10,ndcg@10", "--json", "-", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["protocol"] == "leave-last-out"
    metrics = set(doc["results"][0]["metrics"])
    assert {"hr@10", "ndcg@10", "latency_ms_per_user", "llm_calls_per_user"} <= metrics
    assert not {"recall@200", "gini@10"} & metrics  # only the metrics asked for


def test_eval_with_config_file(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        'dataset = "ml-latest-small"\nseeds = 1\nmetrics = ["hr@10"]\n'
        '[protocol]\nname = "cold-start"\nn_users = 20\n'
        '[[pipelines]]\nname = "mine"\n'
        'stages = [{kind = "popularity"}, {kind = "cf"}, {kind = "fuse", method = "weighted"}]\n'
    )
    res = runner.invoke(app, ["eval", "--config", str(cfg), "--json", "-", "--quiet"])
    assert res.exit_code == 0, res.output
    stages = json.loads(res.stdout)["results"][0]["stages"]
    assert set(stages) == {"retrieve:popularity", "retrieve:cf", "fuse:weighted"}


def test_bad_config_field_is_named(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[pipelines]]\nname = "x"\nstages = [{kind = "cf", factorz = 2}]\n')
    res = runner.invoke(app, ["eval", "--config", str(cfg), "--quiet"])
    assert res.exit_code == 2
    assert "factorz" in res.output and "Traceback" not in res.output


def test_missing_dataset_message(tmp_path):
    res = runner.invoke(
        app, ["data", "info", "ml-latest-small", "--data-dir", str(tmp_path), "--offline"]
    )
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "ml-latest-small" in out and "ratings.csv" in out and "Downloads are off" in out


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("RECFUNNEL_OFFLINE", raising=False)
    monkeypatch.setenv("RECFUNNEL_DATA_URL", "http://127.0.0.1:9")  # nothing listens there
    res = runner.invoke(app, ["data", "info", "ml-latest-small", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "downloading it failed" in out and "RECFUNNEL_DATA_URL" in out
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unknown_names():
    res = runner.invoke(app, ["eval", "--pipelines", "nope", "--quiet"])
    assert res.exit_code == 2 and "unknown pipeline" in res.output
    res = runner.invoke(app, ["data", "info", "nope"])
    assert res.exit_code == 2 and "unknown dataset" in res.output


def test_data_list_and_info():
    res = runner.invoke(app, ["data", "list", "--json"])
    names = {d["name"] for d in json.loads(res.stdout)}
    assert {"ml-latest-small", "ml-100k", "ml-1m", "serendipity-2018", "lastfm-2k"} <= names
    res = runner.invoke(app, ["data", "info", "ml-latest-small", "--json"])
    info = json.loads(res.stdout)
    assert info["users"] == 610 and info["interactions"] == 100_836


def test_eval_any_csv_with_catalog(tmp_path):
    """The generic loader through the CLI: an interactions CSV plus an items CSV."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    pd.DataFrame(
        {
            "user_id": rng.integers(0, 40, n),
            "item_id": rng.integers(0, 60, n),
            "rating": rng.integers(1, 6, n).astype(float),
            "timestamp": np.arange(n),
        }
    ).drop_duplicates(["user_id", "item_id"]).to_csv(tmp_path / "events.csv", index=False)
    pd.DataFrame({"item_id": range(60), "title": [f"Item {i}" for i in range(60)]}).to_csv(
        tmp_path / "items.csv", index=False
    )
    res = runner.invoke(
        app,
        ["eval", "--dataset", str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv"),
         "--pipelines", "popularity,cf", "--seeds", "1", "--users", "10", "--history", "3",
         "--metrics", "hr@10,recall@20", "--json", "-", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["results"]) == 2 and doc["results"][0]["n_users"] == 10


def test_goal_option_needs_a_goal_stage_and_reaches_it():
    from recfunnel.cli.eval import llm_overrides
    from recfunnel.evaluate.config import parse_experiment

    res = runner.invoke(app, ["eval", "--pipelines", "mf,hybrid+llm-verbalizer", "--goal",
                              "accuracy+fairness", "--quiet"])  # fmt: skip
    assert res.exit_code == 2 and "--goal: no LLM stage" in res.output
    cfg = parse_experiment({"pipelines": ["mf+llm-goal", "hybrid+llm-verbalizer"]})
    got = llm_overrides(cfg, goal="accuracy+fairness", top_n=8, blend=0.5)
    goal_stage, verbalizer = got.pipelines[0].stages[-1], got.pipelines[1].stages[-1]
    assert goal_stage.goal == "accuracy+fairness" and goal_stage.top_n == 8
    assert verbalizer.blend == 0.5 and verbalizer.top_n == 8


def test_train_cli_errors_are_clear(tmp_path):
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
    bad = tmp_path / "bad.toml"
    bad.write_text("[sft]\nlearning_rat = 1e-4\n")
    res = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "learning_rat" in res.output


def test_missing_extra_is_named_with_its_brackets(tmp_path, monkeypatch):
    """The install hint survives the console: `recfunnel[train]`, not `recfunnel`."""
    from recfunnel.core.errors import require
    from recfunnel.train import finetune

    def train(*args, **kwargs):
        require("no_such_module_recfunnel", "train", "recfunnel train")

    monkeypatch.setattr(finetune, "train", train)
    cfg = tmp_path / "train.toml"
    cfg.write_text('out = "runs/x"\n')
    res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "pip install 'recfunnel[train]'" in " ".join(res.output.split())


def test_serve_and_eval_chat_cli_errors_are_clear(tmp_path):
    res = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
    bad = tmp_path / "bad.toml"
    bad.write_text("budget_ms = -5\n")
    res = CliRunner().invoke(app, ["serve", "--config", str(bad)])
    assert res.exit_code == 2 and "budget_ms: Input should be greater than 0" in " ".join(
        res.output.split()
    )
    bad.write_text('[pipeline]\nname = "routed"\n[pipeline.route]\n'
                   'cold = "hybrid+llm-verbalizer"\nwarm = "cf"\n')  # fmt: skip
    res = CliRunner().invoke(app, ["serve", "--config", str(bad)])
    assert res.exit_code == 2 and "serving needs a fixed threshold" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["serve", "--rate-limit", "lots"])
    assert res.exit_code == 2 and "'lots' is not a rate" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["eval-chat", "--policies", "llm,magic"])
    assert res.exit_code == 2 and "magic" in res.output
