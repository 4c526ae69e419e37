"""`recfunnel config`: every shipped config is valid and round-trips through TOML."""

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recfunnel.cli import app
from recfunnel.cli.config import config_class, guess_kind
from recfunnel.core.config import parse_config, read_toml, to_toml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
runner = CliRunner()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_round_trips_through_toml(path):
    raw = read_toml(path)
    cls = config_class(guess_kind(raw))
    cfg = parse_config(raw, cls, str(path))
    text = to_toml(cfg)
    again = parse_config(tomllib.loads(text), cls, "(written back)")
    assert again == cfg
    assert to_toml(again) == text  # a fixed point: nothing drifts on a second pass


def test_the_stacked_cascade_keeps_its_stages_and_placebo():
    path = next(p for p in CONFIGS if p.name == "cold-start-stacked.toml")
    res = runner.invoke(app, ["config", str(path)])
    assert res.exit_code == 0, res.output
    doc = tomllib.loads(res.stdout)
    names = [p["name"] for p in doc["pipelines"]]
    assert names[0] == "popularity" and {"ltr", "ltr+llm", "ltr+llm-shuffled"} <= set(names)
    by = {p["name"]: [s["kind"] for s in p["stages"]] for p in doc["pipelines"]}
    assert by["ltr+llm"][-3:-1] == ["llm-features", "ltr"]
    assert by["ltr+exposure"] == [*by["ltr"], "exposure"]  # the same ranker, then the penalty
    shuffled = next(p for p in doc["pipelines"] if p["name"] == "ltr+llm-shuffled")
    feats = [s for s in shuffled["stages"] if s["kind"] == "llm-features"]
    assert feats[0]["placebo"] is True
    real = next(p for p in doc["pipelines"] if p["name"] == "ltr+llm")
    assert next(s for s in real["stages"] if s["kind"] == "llm-features")["placebo"] is False


def test_a_bad_field_is_named_and_a_bad_kind_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[pipelines]]\nname = "x"\nstages = [{ kind = "cf", factorz = 3 }]\n')
    res = runner.invoke(app, ["config", str(bad)])
    assert res.exit_code != 0 and "pipelines.0.stages.0" in res.output
    assert "factorz" in res.output
    res = runner.invoke(app, ["config", str(bad), "--kind", "nope"])
    assert res.exit_code != 0 and "--kind" in res.output
