"""The trainer arguments every training step shares, and the arithmetic it runs in."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recfunnel.train.config import StepConfig

log = logging.getLogger(__name__)


def training_precision(precision: str, native_bf16: bool) -> str:
    """The arithmetic a run uses. Chosen here, never left to the trainer library: TRL's
    configs default to bf16, which on an AVX2-only CPU makes a step ~12x slower."""
    if precision == "auto":
        return "bfloat16" if native_bf16 else "float32"
    if precision == "bfloat16" and not native_bf16:
        log.warning("precision bfloat16 on a device without native bf16: expect slow steps")
    return precision


def trainer_args(
    cls: Any,
    kind: str,
    step: StepConfig,
    out: Path,
    seed: int,
    gpu: bool,
    precision: str,
    **extra: Any,
) -> Any:
    """The trainer arguments every step shares (``cls``: its TrainingArguments class)."""
    # TRL turns recomputation on by default; on a CPU memory is plenty and it only costs
    # time. transformers 5.x renamed the switch (the old name warns), 5.0 may lack the new one.
    new = "activation_checkpointing"
    off = new if new in {f.name for f in dataclasses.fields(cls)} else "gradient_checkpointing"
    return cls(
        bf16=precision == "bfloat16",
        fp16=False,
        output_dir=str(out / f".{kind}-work"),
        per_device_train_batch_size=step.batch_size,
        gradient_accumulation_steps=step.grad_accum,
        num_train_epochs=step.epochs,
        max_steps=step.max_steps,
        learning_rate=step.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not gpu,
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
        **{off: False},
        **extra,
    )


@dataclass(frozen=True)
class Run:
    """What every step of one training run shares: where it writes, its seed, its device
    and arithmetic. ``args`` builds one step's trainer arguments from them."""

    out: Path
    seed: int
    gpu: bool
    precision: str

    def args(self, cls: Any, kind: str, step: StepConfig, **extra: Any) -> Any:
        return trainer_args(cls, kind, step, self.out, self.seed, self.gpu, self.precision,
                            **extra)  # fmt: skip
