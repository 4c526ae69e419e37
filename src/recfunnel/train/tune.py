"""`recfunnel train`: SFT then DPO of LoRA adapters on the verbalizer reranker.

The base model is loaded through the hf back-end (the bundled GGUF de-quantized once), the
examples come from :mod:`recfunnel.train.examples`, and TRL does the training on PEFT
LoRA adapters. SFT teaches the answer format and the target; DPO then prefers the target
over the position-biased answer. The DPO reference is the SFT model (frozen, merged), and
DPO keeps training the SFT adapter, so the result is one adapter the hf back-end loads on
the base model (``llm = { backend = "hf", adapter = "runs/reranker/sft+dpo" }``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator

from recfunnel.core.config import Strict
from recfunnel.core.errors import require
from recfunnel.data import load_dataset
from recfunnel.data.splits import LeaveLastOutConfig, ProtocolConfig
from recfunnel.llm.base import LLMConfig
from recfunnel.llm.hf import HFLLM, bf16_is_native, quiet_library_deprecations
from recfunnel.stages.base import FitContext
from recfunnel.stages.base import StageConfig as AnyStageConfig
from recfunnel.stages.registry import build_stage, stage_config_type
from recfunnel.stages.retrieve.base import Retriever
from recfunnel.stages.retrieve.cf import CFConfig
from recfunnel.stages.text import PromptStyle
from recfunnel.train.examples import Example, build_examples, dpo_rows, held_out, sft_rows

if TYPE_CHECKING:
    RetrieverConfig = AnyStageConfig
else:
    RetrieverConfig = stage_config_type("pool")

log = logging.getLogger(__name__)


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


class StageConfig(Strict):
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


class DPOStageConfig(StageConfig):
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
    sft: StageConfig = Field(default_factory=StageConfig)
    dpo: DPOStageConfig | None = Field(
        default_factory=DPOStageConfig, description="`dpo = false`: SFT only"
    )

    @field_validator("dpo", mode="before")
    @classmethod
    def _dpo_off(cls, v: Any) -> Any:
        return None if v is False else v

    @field_serializer("dpo")
    def _dpo_written(self, v: DPOStageConfig | None) -> Any:
        return False if v is None else v  # written back as `dpo = false`, as it is read

    @model_validator(mode="after")
    def _listwise_has_no_dpo(self) -> TrainConfig:
        if self.sft.objective == "listwise" and self.dpo is not None:
            raise ValueError(
                "dpo: a listwise adapter's answers are ranks, not completions, so DPO has no "
                "pairs to compare; set `dpo = false`"
            )
        return self


def _imports() -> tuple[Any, Any, Any]:
    why = "recfunnel train"
    return (require("datasets", "train", why), require("peft", "train", why),
            require("trl", "train", why))  # fmt: skip


def make_examples(cfg: TrainConfig) -> tuple[list[Example], PromptStyle]:
    """The training lists of ``cfg`` (training split of leave-last-out only)."""

    data = load_dataset(cfg.dataset, cfg.data_dir)
    split = cfg.protocol.split(data, cfg.seed)
    held = held_out(split)
    for seed in set(cfg.eval_seeds) - {cfg.seed}:  # cold-start: other test users per seed
        for user, items in held_out(cfg.protocol.split(data, seed)).items():
            held.setdefault(user, set()).update(items)
    ex = cfg.examples
    seeded = ex.retriever.model_copy(update={"seed": cfg.seed}) if "seed" in \
        type(ex.retriever).model_fields else ex.retriever  # fmt: skip
    retriever = build_stage(seeded).fit(FitContext(split.train, data.catalog, cfg.seed))
    assert isinstance(retriever, Retriever)
    style = PromptStyle(
        noun=data.catalog.noun,
        history_items=ex.history_items,
        title_chars=ex.title_chars,
        show_prev_rank=ex.show_prev_rank,
    )
    examples = build_examples(
        split,
        data.catalog,
        retriever,
        n_lists=ex.lists,
        shuffles=ex.shuffles,
        candidates=ex.candidates,
        style=style,
        seed=cfg.seed,
        min_history=ex.min_history,
        history_cut=ex.history_cut,
        relevance=ex.relevance,
        rejected=ex.rejected,
        held=held,
    )
    return examples, style


def training_precision(precision: str, native_bf16: bool) -> str:
    """The arithmetic a run uses. Chosen here, never left to the trainer library: TRL's
    configs default to bf16, which on an AVX2-only CPU makes a step ~12x slower."""
    if precision == "auto":
        return "bfloat16" if native_bf16 else "float32"
    if precision == "bfloat16" and not native_bf16:
        log.warning("precision bfloat16 on a device without native bf16: expect slow steps")
    return precision


def _args(
    cls: Any,
    kind: str,
    stage: StageConfig,
    out: Path,
    seed: int,
    gpu: bool,
    precision: str,
    **extra: Any,
) -> Any:
    """The trainer arguments every stage shares (``cls``: its TrainingArguments class)."""
    # TRL turns recomputation on by default; on a CPU memory is plenty and it only costs
    # time. transformers 5.x renamed the switch (the old name warns), 5.0 may lack the new one.
    new = "activation_checkpointing"
    off = new if new in {f.name for f in dataclasses.fields(cls)} else "gradient_checkpointing"
    return cls(
        bf16=precision == "bfloat16",
        fp16=False,
        output_dir=str(out / f".{kind}-work"),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        learning_rate=stage.learning_rate,
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


def _logs_to_stderr() -> contextlib.AbstractContextManager[Any]:
    """The trainers print each step's log dict on stdout; keep stdout for `--json`."""
    return contextlib.redirect_stdout(sys.stderr)


def _losses(history: list[dict[str, Any]], key: str = "loss") -> list[float]:
    return [float(h[key]) for h in history if key in h]


@quiet_library_deprecations()
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Build examples, run SFT (then DPO), save the adapters and a summary JSON."""
    datasets, peft, trl = _imports()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    examples, _ = make_examples(cfg)
    llm = HFLLM(LLMConfig(backend="hf", model=cfg.model, n_threads=cfg.threads, cache=False))
    torch = llm._torch
    torch.manual_seed(cfg.seed)
    tok = llm.tokenizer
    gpu = bool(torch.cuda.is_available())
    precision = training_precision(cfg.precision, bf16_is_native(torch, gpu))
    summary: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "examples": len(examples),
        "lists": len({(e.user, e.cut) for e in examples}),
        "users": len({e.user for e in examples}),
        "rejected_kinds": {
            k: sum(e.rejected_kind == k for e in examples) for k in ("position", "ungrounded")
        },
        "target_label_share": _label_share(examples),
        "examples_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "precision": precision,
    }
    lora = peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        layers_to_transform=cfg.lora.layers,
        task_type="CAUSAL_LM",
    )
    model = llm.model
    model.train()
    t1 = time.perf_counter()
    if cfg.sft.objective == "listwise":
        sft = _listwise_trainer(
            llm, peft.get_peft_model(model, lora), examples, cfg, out, gpu, precision
        )
    else:
        sft = trl.SFTTrainer(
            model=model,
            args=_args(
                trl.SFTConfig,
                "sft",
                cfg.sft,
                out,
                cfg.seed,
                gpu,
                precision,
                completion_only_loss=True,
                max_length=None,
            ),
            train_dataset=datasets.Dataset.from_pandas(sft_rows(examples, llm.render)),
            processing_class=tok,
            peft_config=lora,
        )
    with _logs_to_stderr():
        sft.train()
    summary["sft"] = {
        "seconds": time.perf_counter() - t1,
        "loss": _losses(sft.state.log_history),
        "steps": sft.state.global_step,
        "bf16": bool(sft.args.bf16),
    }
    sft.model.save_pretrained(str(out / "sft"))
    policy = sft.model
    if cfg.dpo is not None:
        ref = copy.deepcopy(policy).merge_and_unload()
        ref.eval()
        dpo_data = datasets.Dataset.from_pandas(dpo_rows(examples, llm.render))
        t2 = time.perf_counter()
        dpo = trl.DPOTrainer(
            model=policy,
            ref_model=ref,
            args=_args(
                trl.DPOConfig,
                "dpo",
                cfg.dpo,
                out,
                cfg.seed,
                gpu,
                precision,
                beta=cfg.dpo.beta,
                max_length=None,
            ),
            train_dataset=dpo_data,
            processing_class=tok,
        )
        with _logs_to_stderr():
            dpo.train()
        hist = dpo.state.log_history
        summary["dpo"] = {
            "seconds": time.perf_counter() - t2,
            "loss": _losses(hist),
            "reward_accuracy": _losses(hist, "rewards/accuracies"),
            "steps": dpo.state.global_step,
            "bf16": bool(dpo.args.bf16),
        }
        dpo.model.save_pretrained(str(out / "sft+dpo"))
    summary["seconds"] = time.perf_counter() - t0
    summary["device"] = "cuda" if gpu else "cpu"
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def _label_share(examples: list[Example]) -> dict[str, float]:
    """How often the target sits at each letter: shuffling should spread it evenly."""
    labels = [e.target_label for e in examples]
    keys, counts = np.unique(labels, return_counts=True)
    return {str(k): float(c) / max(len(labels), 1) for k, c in zip(keys, counts, strict=True)}


def _listwise_trainer(
    llm: Any,
    model: Any,
    examples: list[Example],
    cfg: TrainConfig,
    out: Path,
    gpu: bool,
    precision: str,
) -> Any:
    """A transformers Trainer whose loss is the verbalizer's own ranking: log-softmax over
    the candidates' letter tokens at the answer position, maximising the mass on the
    listed positives (LlamaRec's objective, with several positives). Every token of the
    loss is spent on ranking -- in the completion objective the reason's ~30 tokens
    outweigh its one letter."""
    import transformers

    torch = llm._torch
    rows = [
        {
            "input_ids": llm.tokenize(llm.render(e.messages)),
            "options": [llm.option_token(label) for label in e.labels],
            "positive": [int(i in e.positives) for i in e.candidates],
        }
        for e in examples
    ]

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in batch)
        n = max(len(r["options"]) for r in batch)
        ids = torch.full((len(batch), width), llm._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        options = torch.zeros((len(batch), n), dtype=torch.long)
        positive = torch.zeros((len(batch), n), dtype=torch.bool)
        valid = torch.zeros((len(batch), n), dtype=torch.bool)
        for row, r in enumerate(batch):
            k = len(r["options"])
            ids[row, width - len(r["input_ids"]) :] = torch.tensor(r["input_ids"])
            mask[row, width - len(r["input_ids"]) :] = 1
            options[row, :k] = torch.tensor(r["options"])
            positive[row, :k] = torch.tensor(r["positive"], dtype=torch.bool)
            valid[row, :k] = True
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as the hf back-end scores (left pad)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "options": options,
            "positive": positive,
            "valid": valid,
        }

    class ListwiseTrainer(transformers.Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            options, positive, valid = (inputs.pop(k) for k in ("options", "positive", "valid"))
            outputs = model(**inputs, use_cache=False, logits_to_keep=1)
            logits = outputs.logits[:, -1].float().gather(1, options)
            logp = logits.masked_fill(~valid, float("-inf")).log_softmax(-1)
            loss = -logp.masked_fill(~positive, float("-inf")).logsumexp(-1).mean()
            return (loss, outputs) if return_outputs else loss

    return ListwiseTrainer(
        model=model,
        args=_args(
            transformers.TrainingArguments,
            "sft",
            cfg.sft,
            out,
            cfg.seed,
            gpu,
            precision,
            remove_unused_columns=False,
        ),
        train_dataset=_ListDataset(rows),
        data_collator=collate,
    )


class _ListDataset:
    """Rows as the Trainer's sampler wants them (len + index); no tokenizer pass needed."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]
