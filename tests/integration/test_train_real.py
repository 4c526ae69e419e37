"""`recfunnel train` on the real SmolLM2-135M (tiny run): SFT lowers the loss on its batch,
DPO runs on top, and the saved adapter loads back through the hf back-end, changing the
model's answers exactly as the trained PEFT model does."""

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from recfunnel.llm.base import LLMConfig
from recfunnel.llm.hf import HFLLM, bf16_is_native
from recfunnel.train.config import TrainConfig
from recfunnel.train.finetune import make_examples, train

pytestmark = pytest.mark.slow


def tiny(out, **kw):
    return TrainConfig.model_validate(
        {
            "out": str(out),
            "seed": 0,
            "examples": {"lists": 2, "shuffles": 1, "candidates": 4, "history_items": 3},
            "sft": {"batch_size": 2, "max_steps": 4, "learning_rate": 1e-3},
            "dpo": {"batch_size": 2, "max_steps": 1},
            **kw,
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("reranker")
    cfg = tiny(out, data_dir=str(shared_data))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    said = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    return cfg, summary, stdout.getvalue(), said


def test_sft_lowers_the_loss_on_its_batch_and_dpo_follows(trained):
    cfg, summary, stdout, said = trained
    assert stdout == ""  # the trainers' step logs go to stderr: `--json` output stays JSON
    assert said == []  # no library deprecation the user cannot act on (transformers 5.x)
    loss = summary["sft"]["loss"]  # one batch (both examples), logged before each update
    assert summary["examples"] == 2 and summary["sft"]["steps"] == 4 and len(loss) == 4
    assert loss[-1] < 0.8 * loss[0]
    assert summary["dpo"]["steps"] == 1 and np.isfinite(summary["dpo"]["loss"]).all()
    # the arithmetic is chosen by the device, not by TRL's bf16 default (~12x slower steps
    # on a CPU without native bf16), and both trainers ran what train.json says
    native = bf16_is_native(torch)
    assert summary["precision"] == ("bfloat16" if native else "float32")
    assert summary["sft"]["bf16"] is native and summary["dpo"]["bf16"] is native
    cfg_out = Path(cfg.out)
    saved = json.loads((cfg_out / "train.json").read_text())
    assert saved["sft"]["loss"] == loss
    for name in ("sft", "sft+dpo"):
        assert (cfg_out / name / "adapter_config.json").is_file()


def test_adapter_round_trip_through_the_hf_backend(trained, shared_data):
    from peft import PeftModel

    cfg, _, _, _ = trained
    examples, _ = make_examples(cfg)
    msgs, labels = examples[0].messages, examples[0].labels
    base = HFLLM(LLMConfig(backend="hf", cache=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = HFLLM(LLMConfig(backend="hf", cache=False, adapter=f"{cfg.out}/sft"))
    assert [w for w in caught if "checkpointing" in str(w.message)] == []
    assert tuned.model_id != base.model_id  # the cache never mixes base and adapter answers
    lp_base = base.option_logprobs(msgs, labels).logprobs
    lp_tuned = tuned.option_logprobs(msgs, labels).logprobs
    assert np.abs(lp_tuned - lp_base).max() > 1e-2  # training moved the answer
    # the merged adapter the back-end runs equals the PEFT model as saved
    fresh = HFLLM(LLMConfig(backend="hf", cache=False))
    fresh.model = PeftModel.from_pretrained(fresh.model, f"{cfg.out}/sft").eval()
    np.testing.assert_allclose(fresh.option_logprobs(msgs, labels).logprobs, lp_tuned, atol=1e-4)
    # SFT taught the target's letter on its own training list
    assert (
        lp_tuned[labels.index(examples[0].target_label)]
        > lp_base[labels.index(examples[0].target_label)]
    )


def test_listwise_sft_moves_the_verbalizers_mass_onto_the_positives(tmp_path, shared_data):
    """The listwise objective trains exactly what the verbalizer reads: its first loss is
    the base verbalizer's score of the positives, after 4 steps on one batch it has fallen,
    and the saved adapter, loaded by the hf back-end, scores the positives that much
    higher (the loss over the batch, -log of the letter mass on the positives)."""
    cfg = TrainConfig.model_validate(
        {
            "out": str(tmp_path / "lw"),
            "data_dir": str(shared_data),
            "protocol": {"name": "cold-start", "n_users": 100, "history": 5},
            "examples": {"lists": 2, "shuffles": 1, "candidates": 6, "history_items": 3,
                         "history_cut": [5, 10], "show_prev_rank": True,
                         "retriever": {"kind": "popularity"}},
            "lora": {"layers": [26, 27, 28, 29]},
            "sft": {"objective": "listwise", "batch_size": 2, "max_steps": 4,
                    "learning_rate": 2e-3},
            "dpo": False,
        }
    )  # fmt: skip
    summary = train(cfg)
    loss = summary["sft"]["loss"]
    assert summary["examples"] == 2 and "dpo" not in summary and len(loss) == 4
    assert summary["sft"]["bf16"] is bf16_is_native(torch)
    assert loss[-1] < 0.8 * loss[0]
    assert not (tmp_path / "lw" / "sft+dpo").exists()
    examples, _ = make_examples(cfg)
    base = HFLLM(LLMConfig(backend="hf", cache=False))
    tuned = HFLLM(LLMConfig(backend="hf", cache=False, adapter=f"{cfg.out}/sft"))

    def mass(llm: HFLLM, e) -> float:
        lp = llm.option_logprobs(e.messages, e.labels).logprobs
        p = np.exp(lp - np.logaddexp.reduce(lp))
        return float(sum(p[e.candidates.index(i)] for i in e.positives))

    before = np.mean([-np.log(mass(base, e)) for e in examples])
    after = np.mean([-np.log(mass(tuned, e)) for e in examples])
    # LoRA starts at zero: the first loss is the base's score, exactly in float32; bf16 mixed
    # precision (where the CPU has it natively) rounds it (1.121 vs 1.144 on a Zen 4 EPYC)
    tol = 0.05 if summary["sft"]["bf16"] else 1e-3
    assert before == pytest.approx(loss[0], abs=tol)
    assert after < 0.8 * before
