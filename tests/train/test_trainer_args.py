"""The trainers' arguments: recomputation off (TRL turns it on by default; on a CPU memory
is plenty and it only costs time), asked for by the name this transformers reads, so the
deprecated alias's FutureWarning is not printed into every training log."""

import warnings
from pathlib import Path

import pytest
import transformers
import trl

from recfunnel.train.args import trainer_args as _args
from recfunnel.train.config import DPOStepConfig, StepConfig


@pytest.mark.parametrize(
    ("cls", "stage"),
    [
        (trl.SFTConfig, StepConfig()),
        (trl.DPOConfig, DPOStepConfig()),
        (transformers.TrainingArguments, StepConfig(objective="listwise")),
    ],
)
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_checkpointing_is_off_without_a_deprecation_warning(
    cls: type, stage: StepConfig, precision: str, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = _args(cls, "sft", stage, tmp_path, 3, False, precision)
    said = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert said == []
    assert args.gradient_checkpointing is False
    assert getattr(args, "activation_checkpointing", False) is False
    assert args.bf16 is (precision == "bfloat16")
    assert (args.seed, args.per_device_train_batch_size) == (3, stage.batch_size)
