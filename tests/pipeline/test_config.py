"""Config validation: every shipped file parses; every bad field is named; a pipeline is a
list of stages in funnel order."""

import tomllib
from pathlib import Path

import pytest

from recfunnel.core.config import load_config, parse_config
from recfunnel.core.errors import ConfigError
from recfunnel.evaluate.config import DiagnoseConfig, ExperimentConfig, parse_experiment
from recfunnel.pipeline import BUILTIN_PIPELINES, PipelineConfig, builtin_pipeline
from recfunnel.train.config import TrainConfig

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


def test_every_shipped_config_is_checked():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    text = path.read_text()
    if "[sft]" in text:  # a training config
        cfg = load_config(path, TrainConfig)
        assert cfg.examples.lists * cfg.examples.shuffles >= 256
        assert (cfg.dpo is None) == (cfg.sft.objective == "listwise")  # DPO needs completions
        return
    if path.name.startswith("serve"):  # a serving config
        from recfunnel.serve.config import ServeConfig

        served = load_config(path, ServeConfig)
        assert served.budget_ms == 2000
        return
    cls = DiagnoseConfig if "[diagnose]" in text else ExperimentConfig
    cfg = load_config(path, cls)
    assert cfg.pipelines and cfg.seeds


def test_defaults_and_builtin_names():
    cfg = parse_experiment({"pipelines": ["popularity", "hybrid"], "seeds": 2})
    assert cfg.seeds == [0, 1]
    assert cfg.protocol.name == "cold-start" and cfg.protocol.n_users == 200
    hybrid = cfg.pipelines[1]
    assert [s.kind for s in hybrid.stages] == ["cf", "content", "popularity", "fuse"]
    assert hybrid.stages[-1].method == "rrf"
    assert set(BUILTIN_PIPELINES) >= {"popularity", "random", "cf", "content", "hybrid"}


def test_a_cascade_is_written_without_code_and_round_trips_through_toml():
    text = """
[[pipelines]]
name = "cascade"
[[pipelines.stages]]
kind = "cf"
[[pipelines.stages]]
kind = "content"
[[pipelines.stages]]
kind = "fuse"
method = "weighted"
[[pipelines.stages]]
kind = "ltr"
top_n = 50
[[pipelines.stages]]
kind = "verbalizer"
top_n = 10
[[pipelines.stages]]
kind = "ltr"
name = "rank:second"
top_n = 10
[[pipelines.stages]]
kind = "explain"
top_k = 3
"""
    cfg = parse_experiment(tomllib.loads(text))
    stages = cfg.pipelines[0].stages
    assert [s.kind for s in stages] == ["cf", "content", "fuse", "ltr", "verbalizer", "ltr",
                                        "explain"]  # fmt: skip
    assert stages[5].name == "rank:second" and stages[3].top_n == 50
    again = ExperimentConfig.model_validate(cfg.model_dump())
    assert again == cfg


@pytest.mark.parametrize(
    ("stages", "where"),
    [
        ([{"kind": "verbalizer"}], "starts with a retrieval stage"),
        ([{"kind": "cf"}, {"kind": "popularity"}], "need a `fuse` stage"),
        ([{"kind": "cf"}, {"kind": "mmr"}, {"kind": "popularity"}], "come first"),
        ([{"kind": "cf"}, {"kind": "explain"}, {"kind": "mmr"}], "closes the pipeline"),
        ([{"kind": "cf"}, {"kind": "popularity"}, {"kind": "fuse"}, {"kind": "fuse"}],
         "at most one `fuse`"),
        ([{"kind": "cf"}, {"kind": "ltr", "name": "x"}, {"kind": "mmr", "name": "x"}], "unique"),
    ],
)  # fmt: skip
def test_stage_order_is_checked(stages, where):
    with pytest.raises(ConfigError, match=where):
        parse_experiment({"pipelines": [{"name": "p", "stages": stages}]})


def test_the_old_pipeline_shape_is_refused_with_directions():
    old = {"name": "p", "retrievers": [{"kind": "cf"}], "rerank": {"method": "verbalizer"}}
    with pytest.raises(ConfigError, match=r"retrievers, rerank: .*\[\[pipelines.stages\]\]"):
        parse_experiment({"pipelines": [old]})


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"pipelines": [{"name": "p", "stages": [{"kind": "cf", "factorz": 3}]}]}, "factorz"),
        ({"pipelines": [{"name": "p", "stages": [{"kind": "cf", "factors": 0}]}]}, "factors"),
        ({"pipelines": [{"name": "p", "stages": [{"kind": "magic"}]}]}, "stages.0"),
        ({"pipelines": ["popularity"], "protocol": {"name": "cold-start", "histroy": 3}},
         "protocol.histroy"),
        ({"pipelines": ["popularity"], "metrics": ["ndcg@ten"]}, "metrics"),
        ({"pipelines": [{"name": "r", "route": {"cold": "popularity", "warm": "cf",
                                                "metric": "ndcg@ten"}}]}, "route.metric"),
        ({"pipelines": ["popularity"], "seeds": 0}, "seeds"),
        ({"pipelines": ["popularity"], "datset": "x"}, "datset"),
        ({"pipelines": []}, "pipelines"),
        ({"pipelines": ["popularity", "popularity"]}, "unique"),
        (
            {"pipelines": [{"name": "p", "stages": [{"kind": "cf"}, {"kind": "popularity"},
                                                     {"kind": "fuse", "weights": [1.0]}]}]},
            "stages.2.weights",
        ),
    ],
)  # fmt: skip
def test_bad_fields_are_named(data, where):
    with pytest.raises(ConfigError) as err:
        parse_experiment(data, source="test.toml")
    assert where in str(err.value)
    assert "test.toml" in str(err.value)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"examples": {"history_cut": [5, 0]}}, "examples.history_cut"),
        ({"examples": {"history_cut": []}}, "examples.history_cut"),
        ({"sft": {"objective": "pairwise"}}, "sft.objective"),
        ({"dpo": {"objective": "listwise"}}, "dpo.objective"),
        ({"lora": {"layers": "top"}}, "lora.layers"),
        ({"examples": {"retriever": {"kind": "verbalizer"}}}, "examples.retriever"),
    ],
)  # fmt: skip
def test_bad_training_fields_are_named(data, where):
    with pytest.raises(ConfigError) as err:
        parse_config(data, TrainConfig, "train.toml")
    assert where in str(err.value) and "train.toml" in str(err.value)


def test_training_config_dpo_false_means_sft_only():
    cfg = parse_config({"dpo": False, "examples": {"history_cut": [5, 10]}}, TrainConfig)
    assert cfg.dpo is None and cfg.examples.history_cut == [5, 10]
    assert parse_config({}, TrainConfig).dpo is not None


def test_unknown_builtin_pipeline():
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        builtin_pipeline("nope")
    with pytest.raises(ConfigError, match="unknown pipeline"):
        parse_experiment({"pipelines": ["nope"]})


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [1,\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, ExperimentConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml", ExperimentConfig)


def test_roundtrip_is_stable():
    cfg = parse_experiment({"pipelines": ["hybrid", "routed"]})
    again = ExperimentConfig.model_validate(cfg.model_dump())
    assert again == cfg


def test_every_builtin_pipeline_keeps_its_name():
    names = {"hybrid+llm-verbalizer", "hybrid+llm-permutation", "hybrid+llm-pointwise",
             "hybrid+ltr", "hybrid+ltr+llm-verbalizer", "mf+mmr", "mf+dpp", "mf+fair", "mf",
             "mf+llm-goal", "popularity", "random", "cf", "itemknn", "content", "sasrec",
             "hybrid", "hybrid-weighted", "routed"}  # fmt: skip
    assert names <= set(BUILTIN_PIPELINES)
    for name in names - {"routed"}:
        assert isinstance(builtin_pipeline(name), PipelineConfig)
