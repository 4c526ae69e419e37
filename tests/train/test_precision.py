"""Training arithmetic is chosen by recfunnel from the device, never by a trainer
library's default (TRL's configs default to bf16: on an AVX2-only CPU a step is then ~12x
slower than in float32)."""

import logging

import pytest

from recfunnel.core.config import load_config
from recfunnel.core.errors import ConfigError
from recfunnel.train.args import training_precision
from recfunnel.train.config import TrainConfig


@pytest.mark.parametrize(
    ("asked", "native", "runs"),
    [
        ("auto", False, "float32"),
        ("auto", True, "bfloat16"),
        ("float32", True, "float32"),
        ("bfloat16", True, "bfloat16"),
    ],
)
def test_precision_follows_the_device_unless_asked(asked: str, native: bool, runs: str) -> None:
    assert training_precision(asked, native) == runs


def test_bf16_asked_on_a_device_without_it_runs_but_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="recfunnel.train.args"):
        assert training_precision("bfloat16", False) == "bfloat16"
    assert "without native bf16" in caplog.text


def test_precision_defaults_to_auto_and_bad_values_are_named(tmp_path) -> None:
    assert TrainConfig().precision == "auto"
    bad = tmp_path / "train.toml"
    bad.write_text('precision = "fp8"\n')
    with pytest.raises(ConfigError, match="precision"):
        load_config(bad, TrainConfig)
