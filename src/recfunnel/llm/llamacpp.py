"""llama.cpp back-end (llama-cpp-python) for GGUF models: fast to load, quantized.

With ``prefix_cache`` on, consecutive prompts that share a prefix (the same user's history
across shuffled candidate orders or pointwise items) reuse the KV cache for that prefix, so
only the differing tail is evaluated. It is off by default: llama.cpp's logits for a tail
evaluated on its own differ from a full pass by up to ~0.16 in log-probability, which
would make an answer depend on the previous call rather than only on its prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from recfunnel.core.errors import require
from recfunnel.core.fingerprint import model_fingerprint
from recfunnel.llm.base import LLMConfig, Message, TemplatedLLM, log_softmax
from recfunnel.llm.cache import AnswerCache
from recfunnel.llm.models import resolve_gguf

log = logging.getLogger(__name__)


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """Load models into plain CPU buffers, not llama.cpp's "extra" buffer types.

    Those repack weights for the CPU's matrix units; on a CPU that reports AMX where the
    kernel does not grant AMX tile state (seen in VMs), the AMX matrix product segfaults
    on the first call. Plain buffers run everywhere (measured: no slower for Q4_1 here).
    """
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params() -> Any:
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


class LlamaCppLLM(TemplatedLLM):
    backend = "llamacpp"

    def __init__(self, config: LLMConfig, cache: AnswerCache | None = None) -> None:
        super().__init__(config, cache)
        llama_cpp = require("llama_cpp", "llamacpp", "the llamacpp back-end")
        self.path = resolve_gguf(config.model)
        threads = config.n_threads or os.cpu_count() or 1
        with plain_cpu_buffers():
            self.llm: Any = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=config.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=512,
                seed=config.seed,
                logits_all=False,
                verbose=False,
            )
        meta = self.llm.metadata
        self._template = meta.get("tokenizer.chat_template")
        vocab = self.llm._model
        self._bos = vocab.token_get_text(vocab.token_bos()) if vocab.token_bos() >= 0 else ""
        self._eos = vocab.token_get_text(vocab.token_eos()) if vocab.token_eos() >= 0 else ""
        self._id = f"llamacpp:{model_fingerprint(self.path)}"

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt; special tokens in the template are parsed as such."""
        toks: list[int] = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        bos = self.llm.token_bos()
        if self.llm._model.add_bos_token() and bos >= 0 and (not toks or toks[0] != bos):
            toks = [bos, *toks]
        return toks

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def option_token(self, option: str) -> int:
        """The first token of an option as the model would write it after the prompt."""
        toks = self.llm.tokenize(option.encode(), add_bos=False, special=False)
        return int(toks[0])

    def _eval_with_prefix_reuse(self, tokens: list[int]) -> int:
        """Evaluate ``tokens``, keeping the KV cache of the prefix shared with the last call.

        Returns how many tokens were actually evaluated.
        """
        llm = self.llm
        if len(tokens) > llm.n_ctx():
            raise ValueError(f"prompt of {len(tokens)} tokens exceeds n_ctx={llm.n_ctx()}")
        keep = 0
        if self.config.prefix_cache:
            old = llm.input_ids[: llm.n_tokens]
            n = min(len(old), len(tokens) - 1)  # always evaluate at least the last token
            same = np.flatnonzero(np.asarray(old[:n]) != np.asarray(tokens[:n]))
            keep = int(same[0]) if len(same) else n
        llm.n_tokens = keep
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.eval(tokens[keep:])
        return len(tokens) - keep

    def _last_logits(self) -> np.ndarray:
        n_vocab = self.llm.n_vocab()
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(n_vocab,)).copy()

    def _option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str]
    ) -> tuple[np.ndarray, int, int]:
        tokens = self.tokenize(self.render(messages))
        with self._lock:
            self._eval_with_prefix_reuse(tokens)
            lp = log_softmax(self._last_logits())
        ids = [self.option_token(o) for o in options]
        return lp[ids], len(tokens), 0

    def _complete(
        self, messages: Sequence[Message], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> tuple[str, int, int]:
        tokens = self.tokenize(self.render(messages))
        with self._lock:
            out = self.llm.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=1 if temperature == 0 else 40,
                stop=list(stop) or None,
                seed=self.config.seed,
                repeat_penalty=self.config.repeat_penalty,
            )
        usage = out["usage"]
        return out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"]
