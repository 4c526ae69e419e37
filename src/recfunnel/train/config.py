"""What `recfunnel train` reads (configs/train-*.toml): the training lists, the LoRA
adapters and the SFT / DPO steps. Kept apart from the training code so that checking a
config (`recfunnel config`) never imports a trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from recfunnel.core.config import Strict
from recfunnel.data.splits import LeaveLastOutConfig, ProtocolConfig
from recfunnel.stages.base import StageConfig as AnyStageConfig
from recfunnel.stages.registry import stage_config_type
from recfunnel.stages.retrieve.cf import CFConfig

if TYPE_CHECKING:
    RetrieverConfig = AnyStageConfig
else:
    RetrieverConfig = stage_config_type("pool")


class ExamplesConfig(Strict):
    """Which training lists are built (see :func:`build_examples`)."""

    lists: int = Field(64, ge=1, description="lists: one per user (and per history cut)")
    shuffles: int = Field(4, ge=1, description="orders per list: the target moves")
    candidates: int = Field(10, ge=2, le=52)
    history_items: int = Field(10, ge=1)
    title_chars: int = Field(40, ge=8)
    min_history: int = Field(3, ge=1)
    history_cut: int | list[int] | None = Field(
        None,
        description="None: the target is each user's last training item (LlamaRec); n: "
        "history = the first n items, positives = later liked items (cold-start); a list of "
        "cuts: one list per cut a user's sequence is long enough for",
    )
    relevance: float | None = Field(4.0, description="min rating of a positive (history_cut)")
    show_prev_rank: bool = Field(
        False, description="print the retriever's rank of each candidate (as the reranker must)"
    )
    rejected: Literal["first", "random"] = Field(
        "first", description="DPO's losing letter: the first listed, or a random wrong one"
    )
    retriever: RetrieverConfig = Field(
        default_factory=lambda: CFConfig(kind="cf", model="als"),
        description="hard negatives: its best candidates other than the target",
    )

    @field_validator("history_cut")
    @classmethod
    def _cuts(cls, v: int | list[int] | None) -> int | list[int] | None:
        cuts = [v] if isinstance(v, int) else v
        if cuts is not None and (not cuts or min(cuts) < 1):
            raise ValueError("every history cut must be >= 1 (and a list must not be empty)")
        return v


class LoRAConfig(Strict):
    r: int = Field(16, ge=1)
    layers: list[int] | None = Field(
        None,
        description="decoder layers that get adapters (None: all); the top half trains ~2x "
        "faster on CPU, as the backward pass stops below the lowest adapted layer",
    )
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


class StepConfig(Strict):
    """One training step of ``recfunnel train`` (SFT, or DPO below): its objective and
    optimiser settings. A step, not a pipeline stage: the name says so."""

    objective: Literal["completion", "listwise"] = Field(
        "completion",
        description="completion: next-token loss on the answer (letter, then reason); "
        "listwise (SFT only): the verbalizer's own score -- softmax over the candidates' "
        "letters at the answer position -- trained to put its mass on every listed positive",
    )
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(-1, description="-1: epochs decide")


class DPOStepConfig(StepConfig):
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)

    @field_validator("objective")
    @classmethod
    def _completion_only(cls, v: str) -> str:
        if v != "completion":
            raise ValueError("DPO compares two completions: objective must be 'completion'")
        return v


class TrainConfig(Strict):
    """configs/train-reranker.toml."""

    dataset: str = "ml-latest-small"
    data_dir: str | None = None
    seed: int = 0
    model: str = "smollm2-135m"
    out: str = "runs/reranker"
    protocol: ProtocolConfig = Field(
        default_factory=LeaveLastOutConfig, description="the evaluation's protocol"
    )
    eval_seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="seeds the adapter is evaluated on: their held-out items are never used",
    )
    threads: int | None = Field(None, ge=1)
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="training arithmetic: bfloat16 mixed precision where the device computes "
        "it natively (a GPU with bf16, a CPU with AVX-512), float32 elsewhere (auto); "
        "train.json records which ran",
    )
    examples: ExamplesConfig = Field(default_factory=ExamplesConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    sft: StepConfig = Field(default_factory=StepConfig)
    dpo: DPOStepConfig | None = Field(
        default_factory=DPOStepConfig, description="`dpo = false`: SFT only"
    )

    @field_validator("dpo", mode="before")
    @classmethod
    def _dpo_off(cls, v: Any) -> Any:
        return None if v is False else v

    @field_serializer("dpo")
    def _dpo_written(self, v: DPOStepConfig | None) -> Any:
        return False if v is None else v  # written back as `dpo = false`, as it is read

    @model_validator(mode="after")
    def _listwise_has_no_dpo(self) -> TrainConfig:
        if self.sft.objective == "listwise" and self.dpo is not None:
            raise ValueError(
                "dpo: a listwise adapter's answers are ranks, not completions, so DPO has no "
                "pairs to compare; set `dpo = false`"
            )
        return self
