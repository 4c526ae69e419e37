"""The transformers back-end on the real bundled SmolLM2-135M (no mocks).

The GGUF is de-quantized once per session into a temp cache (~20 s); every other load in
this file reads that cache. The first load also finds a corrupt folder planted where the
cache goes, so the rebuild path costs no extra de-quantization.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from recfunnel.core.errors import ConfigError
from recfunnel.core.fingerprint import model_fingerprint
from recfunnel.core.paths import CACHE_ENV
from recfunnel.llm import LLMConfig, build_llm
from recfunnel.llm import hf as hf_module
from recfunnel.llm.base import Message
from recfunnel.llm.hf import HFLLM
from recfunnel.llm.llamacpp import LlamaCppLLM
from recfunnel.llm.models import smollm2_path

pytestmark = pytest.mark.slow

LETTERS = [chr(ord("A") + i) for i in range(20)]


def _question(text: str) -> list[Message]:
    return [
        {"role": "system", "content": "You answer with a single capital letter."},
        {"role": "user", "content": text},
        {"role": "assistant", "content": "Answer: "},
    ]


PROMPTS: list[list[Message]] = [
    _question("Which letter comes right after Q in the alphabet?"),
    _question("Options: A) Paris B) Rome C) Berlin. What is the capital of Italy?"),
    _question("What is the first letter of the alphabet?"),
    _question(
        "A user watched Toy Story, Finding Nemo and Up. Which movie do they want next? "
        "A) Saw B) Cars C) Alien D) Heat E) Ratatouille"
    ),
]


@dataclass
class ColdLoad:
    llm: HFLLM
    cache: Path
    seconds: float
    warnings: list[str]


@pytest.fixture(scope="session")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColdLoad]:
    """The one de-quantizing load, into a session cache that holds a corrupt folder."""
    cache = tmp_path_factory.mktemp("recfunnel-cache")
    target = cache / "models" / "hf" / model_fingerprint(smollm2_path())[:16]
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"not a safetensors file")
    (target / "recfunnel-dequantized.json").write_text(
        f'{{"fingerprint": "{model_fingerprint(smollm2_path())}"}}'
    )

    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler = Grab()
    hf_log = logging.getLogger("recfunnel.llm.hf")
    hf_log.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(CACHE_ENV, str(cache))
            t0 = time.perf_counter()
            llm = HFLLM(LLMConfig(backend="hf", cache=False))
            seconds = time.perf_counter() - t0
    finally:
        hf_log.removeHandler(handler)
    yield ColdLoad(llm, cache, seconds, seen)


@pytest.fixture(scope="module")
def hf(cold: ColdLoad) -> HFLLM:
    return cold.llm


@pytest.fixture(scope="module")
def llamacpp() -> LlamaCppLLM:
    return LlamaCppLLM(LLMConfig(cache=False))


def _warm(cold: ColdLoad, monkeypatch: pytest.MonkeyPatch, **kw: object) -> HFLLM:
    monkeypatch.setenv(CACHE_ENV, str(cold.cache))
    return HFLLM(LLMConfig(backend="hf", cache=False, **kw))


# ---- scoring --------------------------------------------------------------------------
def test_option_logprobs_are_log_probabilities(hf: HFLLM) -> None:
    scores = hf.option_logprobs(PROMPTS[0], LETTERS)
    assert scores.logprobs.shape == (20,)
    assert np.all(np.isfinite(scores.logprobs))
    assert np.all(scores.logprobs <= 0)
    assert np.exp(scores.logprobs).sum() <= 1 + 1e-9  # distinct tokens of one distribution
    assert scores.prompt_tokens == hf.count_tokens(hf.render(PROMPTS[0]))
    assert scores.missing == 0


def test_batched_equals_unbatched(hf: HFLLM) -> None:
    # 10 prompts of different lengths: two forward batches, both left-padded
    batch = [*PROMPTS, *(_question("Pick one. " * k + "Which?") for k in (1, 5, 9, 20, 40, 3))]
    together = hf._option_logprobs_many(batch, LETTERS)
    for messages, (lp, pt, missing) in zip(batch, together, strict=True):
        alone, alone_pt, _ = hf._option_logprobs(messages, LETTERS)
        assert pt == alone_pt
        assert missing == 0
        np.testing.assert_allclose(lp, alone, atol=1e-4, rtol=0)


def test_agrees_with_llamacpp(hf: HFLLM, llamacpp: LlamaCppLLM) -> None:
    """Both run the same Q4_1 weights (HF de-quantized to fp32), so they rank options alike."""
    for messages in PROMPTS:
        ours = hf.option_logprobs(messages, LETTERS)
        theirs = llamacpp.option_logprobs(messages, LETTERS)
        assert ours.prompt_tokens == theirs.prompt_tokens
        rho = spearmanr(ours.logprobs, theirs.logprobs).statistic
        assert rho > 0.8, (messages[1]["content"], rho)
        assert np.argmax(ours.logprobs) == np.argmax(theirs.logprobs)


def test_render_and_tokens_match_llamacpp(hf: HFLLM, llamacpp: LlamaCppLLM) -> None:
    conversations: list[list[Message]] = [
        *PROMPTS,
        [{"role": "user", "content": "Hello"}],  # the template adds its default system turn
        [
            {"role": "user", "content": "Rank these: x, y"},
            {"role": "assistant", "content": "y, x"},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "Because "},
        ],
    ]
    for messages in conversations:
        text = hf.render(messages)
        assert text == llamacpp.render(messages)
        assert hf.tokenize(text) == llamacpp.tokenize(text)
    assert hf.render(PROMPTS[0]).endswith("<|im_start|>assistant\nAnswer: ")
    assert hf.tokenize(hf.render(PROMPTS[0])).count(hf.tokenizer.bos_token_id) == 3  # no extra BOS


# ---- generation -----------------------------------------------------------------------
COUNT: list[Message] = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


def test_greedy_completion_is_deterministic_and_stops(hf: HFLLM) -> None:
    free = hf.complete(COUNT, max_tokens=24)
    assert "5" in free.text  # so the stop string below really cuts the answer
    first = hf.complete(COUNT, max_tokens=24, stop=["5"])
    second = hf.complete(COUNT, max_tokens=24, stop=["5"])
    assert not first.cached and not second.cached
    assert first.text == second.text
    assert "5" not in first.text
    assert free.text.startswith(first.text)
    assert 0 < first.completion_tokens < free.completion_tokens <= 24
    assert first.prompt_tokens == hf.count_tokens(hf.render(COUNT))


# ---- loading and the de-quantized cache -------------------------------------------------
def test_corrupt_cache_folder_is_rebuilt(cold: ColdLoad) -> None:
    assert any("unusable" in w and "rebuilding" in w for w in cold.warnings), cold.warnings
    folders = list((cold.cache / "models" / "hf").iterdir())
    assert len(folders) == 1  # the temp folder was renamed into place, nothing left beside it
    assert (folders[0] / "model.safetensors").stat().st_size > 100_000_000
    assert (folders[0] / "recfunnel-dequantized.json").is_file()


def test_second_load_reads_the_cache(cold: ColdLoad, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = _warm(cold, monkeypatch)
    assert warm.load_seconds < cold.seconds / 4, (warm.load_seconds, cold.seconds)
    assert warm.model_id == cold.llm.model_id
    assert warm.model_id == f"hf:{model_fingerprint(smollm2_path())}"
    np.testing.assert_allclose(
        warm.option_logprobs(PROMPTS[1], LETTERS).logprobs,
        cold.llm.option_logprobs(PROMPTS[1], LETTERS).logprobs,
        atol=1e-5,
        rtol=0,
    )


def test_loads_a_local_hf_folder(cold: ColdLoad, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = next((cold.cache / "models" / "hf").iterdir())
    llm = _warm(cold, monkeypatch, model=str(folder))
    assert llm.model_id == f"hf:{model_fingerprint(folder)}"
    assert llm.render(PROMPTS[0]) == cold.llm.render(PROMPTS[0])


def test_missing_model_and_adapter_raise_config_error(
    cold: ColdLoad, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="no-such-model"):
        _warm(cold, monkeypatch, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no-such-adapter"):
        _warm(cold, monkeypatch, adapter=str(tmp_path / "no-such-adapter"))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_adapter_is_applied(
    cold: ColdLoad, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(next((cold.cache / "models" / "hf").iterdir()))
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    tuned = _warm(cold, monkeypatch, adapter=str(tmp_path / "adapter"))
    assert tuned.model_id.startswith(cold.llm.model_id + ":")
    assert tuned.model_id != cold.llm.model_id
    before = cold.llm.option_logprobs(PROMPTS[0], LETTERS).logprobs
    after = tuned.option_logprobs(PROMPTS[0], LETTERS).logprobs
    assert np.all(np.isfinite(after))
    assert np.abs(after - before).max() > 1e-3  # random LoRA weights change the answer


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_warns_where_the_cpu_lacks_it(
    cold: ColdLoad, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    native: bool,
) -> None:  # fmt: skip
    """bf16 on an AVX2-only CPU runs a scalar fallback ~50x slower than fp32: say so."""
    monkeypatch.setattr(hf_module, "bf16_is_native", lambda torch, cuda=False: native)
    with caplog.at_level(logging.WARNING, logger="recfunnel.llm.hf"):
        llm = _warm(cold, monkeypatch, dtype="bfloat16")
    assert llm.model_id.endswith(":bfloat16")
    assert ("no native bfloat16" in caplog.text) is not native


def test_bf16_is_native_matches_the_cpus_own_flags() -> None:
    """An independent oracle: oneDNN runs bf16 products on AVX-512 (F, BW, VL, DQ) or AMX;
    the CPU's flags say whether this one has them."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(cpuinfo.read_text().split())
    native = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags
    assert hf_module.bf16_is_native(torch) is native


def test_build_llm_picks_the_backend(cold: ColdLoad, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(cold.cache))
    assert isinstance(build_llm(LLMConfig(backend="hf", cache=False)), HFLLM)
    assert isinstance(build_llm(LLMConfig(backend="llamacpp", cache=False)), LlamaCppLLM)


def test_cache_folder_name_is_the_gguf_fingerprint(cold: ColdLoad) -> None:
    (folder,) = (cold.cache / "models" / "hf").iterdir()
    assert folder.name == model_fingerprint(smollm2_path())[:16]
