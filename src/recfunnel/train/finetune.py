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
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.core.errors import require
from recfunnel.data import load_dataset
from recfunnel.llm.base import LLMConfig
from recfunnel.llm.hf import HFLLM, bf16_is_native, quiet_library_deprecations
from recfunnel.pipeline.funnel import with_seed
from recfunnel.stages.base import FitContext
from recfunnel.stages.registry import build_stage
from recfunnel.stages.retrieve.base import Retriever
from recfunnel.stages.text import PromptStyle
from recfunnel.train.args import Run, training_precision
from recfunnel.train.config import TrainConfig
from recfunnel.train.examples import Example, build_examples, dpo_rows, held_out, sft_rows
from recfunnel.train.listwise import listwise_trainer

log = logging.getLogger(__name__)


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
    retriever = build_stage(with_seed(ex.retriever, cfg.seed)).fit(
        FitContext(split.train, data.catalog, cfg.seed)
    )
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
    run = Run(out, cfg.seed, gpu, precision)
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
        sft = listwise_trainer(llm, peft.get_peft_model(model, lora), examples, cfg, run)
    else:
        sft = trl.SFTTrainer(
            model=model,
            args=run.args(
                trl.SFTConfig, "sft", cfg.sft, completion_only_loss=True, max_length=None
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
            args=run.args(trl.DPOConfig, "dpo", cfg.dpo, beta=cfg.dpo.beta, max_length=None),
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
