"""Config validation: every shipped file parses; every bad field is named."""

from pathlib import Path

import pytest

from recfunnel.config import (
    BUILTIN_PIPELINES,
    DiagnoseConfig,
    ExperimentConfig,
    builtin_pipeline,
    load_config,
    parse_config,
)
from recfunnel.errors import ConfigError
from recfunnel.train.tune import TrainConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


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
        assert served.pipeline.route.threshold == 20 and served.budget_ms == 2000
        return
    cls = DiagnoseConfig if "[diagnose]" in text else ExperimentConfig
    cfg = load_config(path, cls)
    assert cfg.pipelines and cfg.seeds


def test_defaults_and_builtin_names():
    cfg = parse_config({"pipelines": ["popularity", "hybrid"], "seeds": 2})
    assert cfg.seeds == [0, 1]
    assert cfg.protocol.name == "cold-start" and cfg.protocol.n_users == 200
    hybrid = cfg.pipelines[1]
    assert [r.kind for r in hybrid.retrievers] == ["cf", "content", "popularity"]
    assert hybrid.fusion is not None and hybrid.fusion.method == "rrf"
    assert set(BUILTIN_PIPELINES) >= {"popularity", "random", "cf", "content", "hybrid"}


def test_several_retrievers_get_rrf_by_default():
    cfg = parse_config(
        {"pipelines": [{"name": "p", "retrievers": [{"kind": "popularity"}, {"kind": "cf"}]}]}
    )
    assert cfg.pipelines[0].fusion is not None


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"pipelines": [{"name": "p", "retrievers": [{"kind": "cf", "factorz": 3}]}]}, "factorz"),
        ({"pipelines": [{"name": "p", "retrievers": [{"kind": "cf", "factors": 0}]}]}, "factors"),
        ({"pipelines": [{"name": "p", "retrievers": [{"kind": "magic"}]}]}, "retrievers.0"),
        ({"pipelines": ["popularity"], "protocol": {"name": "cold-start", "histroy": 3}},
         "protocol.cold-start.histroy"),
        ({"pipelines": ["popularity"], "metrics": ["ndcg@ten"]}, "metrics"),
        ({"pipelines": ["popularity"], "seeds": 0}, "seeds"),
        ({"pipelines": ["popularity"], "datset": "x"}, "datset"),
        ({"pipelines": []}, "pipelines"),
        ({"pipelines": ["popularity", "popularity"]}, "unique"),
        (
            {"pipelines": [{"name": "p", "retrievers": [{"kind": "cf"}, {"kind": "popularity"}],
                            "fusion": {"weights": [1.0]}}]},
            "fusion.weights",
        ),
    ],
)  # fmt: skip
def test_bad_fields_are_named(data, where):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.toml")
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
    ],
)  # fmt: skip
def test_bad_training_fields_are_named(data, where):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "train.toml", TrainConfig)
    assert where in str(err.value) and "train.toml" in str(err.value)


def test_training_config_dpo_false_means_sft_only():
    cfg = parse_config({"dpo": False, "examples": {"history_cut": [5, 10]}}, cls=TrainConfig)
    assert cfg.dpo is None and cfg.examples.history_cut == [5, 10]
    assert parse_config({}, cls=TrainConfig).dpo is not None


def test_unknown_builtin_pipeline():
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        builtin_pipeline("nope")
    with pytest.raises(ConfigError, match="unknown pipeline"):
        parse_config({"pipelines": ["nope"]})


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [1,\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")


def test_roundtrip_is_stable():
    cfg = parse_config({"pipelines": ["hybrid"]})
    again = ExperimentConfig.model_validate(cfg.model_dump())
    assert again == cfg
