"""What a new user meets first must be true (issue 33): a run whose LLM never answered
fails, configs say what is wrong and nothing else, suspicious data is named, and the
command line answers --version and -h."""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recfunnel.cli import app
from recfunnel.core.config import parse_config
from recfunnel.core.errors import ConfigError, DatasetFormatError
from recfunnel.data.splits import ColdStartConfig
from recfunnel.data.tabular import load_tabular
from recfunnel.evaluate.config import ExperimentConfig

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def data_env(shared_data, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_DATA", str(shared_data))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_llm_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "dead.toml"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    cfg.write_text(
        'seeds = 1\nmetrics = ["hr@10", "ndcg@10"]\n[protocol]\nname = "cold-start"\nn_users = 8\n'
        '[[pipelines]]\nname = "popularity"\nstages = [{kind = "popularity"}]\n'
        '[[pipelines]]\nname = "pop+llm"\n'
        'stages = [{kind = "popularity"}, {kind = "verbalizer", top_n = 5, llm = '
        f'{{backend = "openai", model = "m", base_url = "{url}", retries = 1}}}}]\n'
    )
    return cfg


# ---- item 2: a run whose LLM never answered ------------------------------------------
def test_a_dead_llm_fails_the_run_with_one_line_naming_stage_and_cause(tmp_path):
    res = runner.invoke(app, ["eval", "--config", str(dead_llm_config(tmp_path))])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: pop+llm: LLM stage 'rerank:verbalizer' answered no row")
    assert "Connection refused" in last and "--allow-fallback" in last
    # the retries are told once for the stage, not once per call
    assert "retry 1/1" not in res.output
    assert len(re.findall(r"rerank:verbalizer: \d+ batch", res.output)) == 1


def test_allow_fallback_keeps_the_run_and_the_table_marks_the_row(tmp_path):
    out = tmp_path / "out.json"
    res = runner.invoke(app, ["eval", "--config", str(dead_llm_config(tmp_path)),
                              "--allow-fallback", "--json", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if "pop+llm" in ln)
    assert "pop+llm !" in row and "fallback 1.00, invalid 0.00" in row
    plain = next(ln for ln in res.output.splitlines() if "popularity " in ln and "│" in ln)
    assert "fallback" not in plain
    doc = json.loads(out.read_text())
    assert doc["results"][1]["stages"]["rerank:verbalizer"]["fallback_rate"] == 1.0


def test_llm_options_without_an_llm_stage_are_refused():
    for opts in (["--backend", "openai"], ["--base-url", "http://127.0.0.1:1/v1"]):
        res = runner.invoke(app, ["eval", "--pipelines", "popularity", *opts])
        assert res.exit_code == 2, res.output
        assert "no LLM stage of the chosen pipelines takes it" in res.output
        assert opts[0] in res.output


# ---- item 5: configs ------------------------------------------------------------------
def test_eval_runs_the_stacked_config_and_notes_its_diagnose_table(monkeypatch):
    seen = {}

    def fake_run(cfg, **kw):
        seen["cfg"] = cfg
        raise ConfigError("stop here")

    monkeypatch.setattr("recfunnel.evaluate.runner.run_experiment", fake_run)
    cfg = REPO / "configs" / "cold-start-stacked.toml"
    res = runner.invoke(app, ["eval", "--config", str(cfg), "--pipelines", "popularity"])
    assert "Extra inputs" not in res.output
    out = " ".join(res.output.split())
    assert "[diagnose] table is read by `recfunnel diagnose`; eval ignores it" in out
    assert [p.name for p in seen["cfg"].pipelines] == ["popularity"]


def test_pipeline_errors_name_the_field_without_the_router_union():
    with pytest.raises(ConfigError) as err:
        parse_config({"pipelines": [{"name": "p", "stages": [{"kind": "cf", "factors": 0}]}]},
                     ExperimentConfig, "exp.toml")  # fmt: skip
    lines = str(err.value).splitlines()
    assert lines[1:] == [
        "  pipelines.0.stages.0.factors: Input should be greater than or equal to 1"
    ]
    # the path docs/concepts.md shows is the real one
    concepts = (REPO / "docs" / "concepts.md").read_text()
    assert "`pipelines.1.stages.0.factors`" in concepts
    with pytest.raises(ConfigError) as err:
        parse_config({"pipelines": ["popularity", {"name": "p", "stages": [{"kind": "cf",
                      "factors": 0}]}]}, ExperimentConfig, "exp.toml")  # fmt: skip
    assert "pipelines.1.stages.0.factors:" in str(err.value)


def test_a_negative_k_is_a_bad_k_not_an_unknown_metric():
    with pytest.raises(ConfigError, match=r"'ndcg@-5': K must be a whole number >= 1"):
        parse_config({"pipelines": ["popularity"], "metrics": ["ndcg@-5"]}, ExperimentConfig)


def test_a_folder_given_as_config_says_it_is_a_folder(tmp_path):
    for cmd in (["eval", "--config", str(tmp_path)], ["config", str(tmp_path)]):
        res = runner.invoke(app, cmd)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "is a folder, not a TOML file" in out, res.output


def test_dataset_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "events.csv").write_text(
        "user_id,item_id,rating\n" + "".join(f"{u},{i},5\n" for u in range(12) for i in range(8))
    )
    cfg = folder / "exp.toml"
    cfg.write_text(
        'seeds = 1\nmetrics = ["hr@10"]\n[dataset]\ninteractions = "events.csv"\n'
        '[protocol]\nname = "cold-start"\nn_users = 3\nhistory = 2\n'
        '[[pipelines]]\nname = "popularity"\nstages = [{kind = "popularity"}]\n'
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    res = runner.invoke(app, ["eval", "--config", str(cfg.relative_to(tmp_path)), "--quiet"])
    assert res.exit_code == 0, res.output


def test_relevance_none_from_toml_and_the_error_that_names_relevance(tmp_path):
    cfg = parse_config({"name": "cold-start", "relevance": "none"}, ColdStartConfig)
    assert cfg.relevance is None
    events = tmp_path / "implicit.csv"  # implicit data written with rating 1 for every event
    events.write_text("user_id,item_id,rating\n" +
                      "".join(f"{u},{i},1\n" for u in range(10) for i in range(9)))  # fmt: skip
    res = runner.invoke(app, ["eval", "--dataset", str(events), "--pipelines", "popularity",
                              "--seeds", "1", "--users", "3", "--quiet"])  # fmt: skip
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "protocol.relevance = 4 keeps only later items rated >= 4" in out
    assert 'relevance = "none"' in out


# ---- item 6: suspicious data ------------------------------------------------------------
def test_duplicate_rows_are_warned_and_dropped_by_the_rule(tmp_path, caplog):
    f = tmp_path / "dup.csv"
    f.write_text("user_id,item_id,rating,timestamp\n1,10,5,100\n1,10,5,100\n1,10,5,200\n2,10,4,1\n")
    with caplog.at_level(logging.WARNING):
        data = load_tabular(f)
    assert len(data.interactions) == 3  # the exact copy is gone, the later re-watch stays
    assert "1 duplicate rows (equal in user_id, item_id, rating, timestamp) dropped" in caplog.text


def test_a_header_only_file_says_no_rows(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("user_id,item_id,rating\n")
    with pytest.raises(DatasetFormatError, match="no rows"):
        load_tabular(f)


def test_pool_at_catalog_size_warns_and_the_table_gives_users_per_seed(tmp_path):
    f = tmp_path / "small.csv"
    rows = "".join(f"{u},{i},5\n" for u in range(12) for i in range((u % 4) + 6))
    f.write_text("user_id,item_id,rating\n" + rows)
    res = runner.invoke(app, ["eval", "--dataset", str(f), "--pipelines", "popularity",
                              "--seeds", "2", "--users", "4", "--history", "2",
                              "--metrics", "hr@10"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "pool_size 200 is at or above the catalog's 9 items" in out
    assert "4 test users per seed" in out


def test_items_with_a_named_dataset_and_empty_pipelines_are_refused(tmp_path):
    res = runner.invoke(app, ["eval", "--dataset", "ml-latest-small", "--items",
                              str(tmp_path / "x.csv")])  # fmt: skip
    assert res.exit_code == 2 and "--items" in res.output and "named dataset" in res.output
    res = runner.invoke(app, ["eval", "--pipelines", ""])
    assert res.exit_code == 2 and "names no pipeline" in res.output


# ---- item 8: the command line itself ------------------------------------------------------
def test_version_and_short_help():
    from recfunnel.core import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"recfunnel {__version__}"
    for cmd in (["-h"], ["eval", "-h"], ["data", "list", "-h"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and "Usage" in res.output, cmd


def test_diagnose_help_has_no_stray_backticks():
    res = runner.invoke(app, ["diagnose", "--help"], terminal_width=100)
    assert res.exit_code == 0
    assert "``" not in res.output and "`" not in res.output.split("Options")[0]


def test_readme_says_which_commands_write_json():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "and writes JSON with `--json`" not in readme  # not true of every command
    assert "`data list`, `data info` and `train` (`--json`) write JSON" in readme
    for cmd in (["data", "list", "--json"],):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and json.loads(res.stdout)
