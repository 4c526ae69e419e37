"""An adapter is never scored on the users it trained on: the training record beside it is
checked against the evaluation's dataset, protocol and seeds before any work."""

import json

import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.evaluate.config import ExperimentConfig
from recfunnel.evaluate.runner import run_experiment
from recfunnel.pipeline.leakage import adapters, check_no_leak

PROTOCOL = {"name": "cold-start", "n_users": 100, "history": 5, "relevance": 4.0, "n_valid": 100}


def record(tmp_path, *, protocol=PROTOCOL, eval_seeds=(0, 1, 2), dataset="ml-latest-small"):
    (tmp_path / "sft").mkdir(exist_ok=True)
    cfg = {"dataset": dataset, "seed": 0, "protocol": protocol, "eval_seeds": list(eval_seeds)}
    (tmp_path / "train.json").write_text(json.dumps({"config": cfg}))
    return str(tmp_path / "sft")


def experiment(adapter, *, seeds=3, data_dir=None, **protocol):
    llm = {"backend": "hf", "adapter": adapter}
    return ExperimentConfig.model_validate({
        "seeds": seeds,
        "data_dir": data_dir,
        "protocol": {**PROTOCOL, **protocol},
        "pipelines": [
            {"name": "pop", "stages": [{"kind": "popularity"}]},
            {"name": "ft", "stages": [{"kind": "popularity"}, {"kind": "verbalizer", "llm": llm},
                                      {"kind": "explain", "llm": llm}]},
        ],
    })  # fmt: skip


def test_adapters_are_found_in_rerank_and_explain(tmp_path):
    cfg = experiment("runs/x/sft")
    assert list(adapters(cfg)) == ["runs/x/sft", "runs/x/sft"]


def test_the_training_protocol_and_seeds_pass(tmp_path):
    check_no_leak(experiment(record(tmp_path)), "ml-latest-small")


def test_other_validation_users_are_refused(tmp_path):
    adapter = record(tmp_path, protocol={**PROTOCOL, "n_valid": 0})
    with pytest.raises(ConfigError, match=r"n_valid.*\(0, 100\)"):
        check_no_leak(experiment(adapter), "ml-latest-small")


def test_another_protocol_is_refused(tmp_path):
    adapter = record(tmp_path, protocol={"name": "leave-last-out"})
    with pytest.raises(ConfigError, match="trained on another split"):
        check_no_leak(experiment(adapter), "ml-latest-small")


def test_a_seed_not_held_out_is_refused(tmp_path):
    adapter = record(tmp_path, eval_seeds=[0, 1])
    with pytest.raises(ConfigError, match=r"seed\(s\) \[2, 3\]"):
        check_no_leak(experiment(adapter, seeds=4), "ml-latest-small")


def test_an_adapter_trained_on_other_data_passes(tmp_path):
    check_no_leak(experiment(record(tmp_path, dataset="ml-1m", eval_seeds=[])), "ml-latest-small")


def test_an_adapter_without_a_record_is_refused_unless_the_user_says_so(tmp_path):
    """Fails closed: what cannot be checked is refused, and the message names the flag."""
    cfg = experiment(str(tmp_path / "elsewhere" / "adapter"))
    with pytest.raises(ConfigError, match=r"no training record.*--allow-unchecked-adapters"):
        check_no_leak(cfg, "ml-latest-small")
    check_no_leak(cfg, "ml-latest-small", allow_unchecked=True)
    allowed = cfg.model_copy(update={"allow_unchecked_adapters": True})
    check_no_leak(allowed, "ml-latest-small", allowed.allow_unchecked_adapters)


def test_a_corrupt_record_is_named(tmp_path):
    adapter = record(tmp_path)
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"unreadable training record .*train\.json"):
        check_no_leak(experiment(adapter), "ml-latest-small")


@pytest.mark.slow
def test_run_experiment_refuses_before_any_work(tmp_path, shared_data):
    cfg = experiment(record(tmp_path, eval_seeds=[0]), seeds=2, data_dir=str(shared_data))
    with pytest.raises(ConfigError, match=r"seed\(s\) \[1\]"):
        run_experiment(cfg)
