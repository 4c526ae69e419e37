"""The LLM protocol every back-end implements, with caching and usage accounting built in.

Back-ends only implement ``_complete`` and ``_option_logprobs`` on a rendered prompt (or on
messages, for remote chat servers); this class adds the persistent cache, token and latency
counters, and the chat-template rendering, so every back-end behaves the same to rerankers.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recfunnel.core.errors import RecfunnelError
from recfunnel.llm.cache import AnswerCache, answer_key

log = logging.getLogger(__name__)
T = TypeVar("T")

Message = dict[str, str]
"""{"role": "system" | "user" | "assistant", "content": str}. A final assistant message is a
prefix the answer continues (e.g. "Answer: "), not a finished turn."""


class LLMUnavailable(RecfunnelError):
    """The back-end could not answer (server down, timeout, out of retries)."""


class LLMConfig(BaseModel):
    """Which model answers, and how it is called."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    backend: Literal["llamacpp", "hf", "openai"] = "llamacpp"
    model: str = Field(
        "smollm2-135m",
        description="'smollm2-135m' / 'gemma3-270m' (bundled GGUFs), a GGUF path, a local HF "
        "folder, or, for openai, the server's model name",
    )
    adapter: str | None = Field(None, description="hf: a PEFT LoRA adapter folder to apply")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: server URL")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: env var with the key")
    timeout_s: float = Field(60.0, gt=0, description="openai: per-request timeout")
    retries: int = Field(2, ge=0, description="openai: retries after the first try")
    concurrency: int = Field(4, ge=1, description="openai: requests in flight at once")
    top_logprobs: int = Field(20, ge=1, description="openai: logprobs the server returns")
    n_ctx: int = Field(8192, ge=256, description="context window (local back-ends)")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    prefix_cache: bool = Field(
        False,
        description="reuse the work on a prompt prefix shared by several prompts (a user's "
        "shuffled listings, a user's pointwise items): llamacpp keeps the KV cache of the "
        "previous call's prefix, hf scores a batch that shares a prefix in one pass over it. "
        "Scores then differ from a full pass by numerical noise and depend on what was "
        "batched together: off by default",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="hf: the weights' type; bfloat16 runs on CPUs with AMX or AVX512-BF16 "
        "several times faster, with other numbers (a different model id in the cache)",
    )
    temperature: float = Field(0.0, ge=0)
    repeat_penalty: float = Field(
        1.0, ge=1.0, description="local back-ends: penalise repeated tokens when generating"
    )
    seed: int = 0
    cache: bool = Field(True, description="persist answers in the SQLite cache")


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool = False
    compute_s: float = float("nan")
    """Back-end seconds when the answer was computed (kept in the cache, so latency
    reports survive cached reruns; NaN for entries cached before it was recorded)."""


@dataclass
class OptionScores:
    """Log-probabilities of each option as the next token, from one forward pass."""

    logprobs: np.ndarray
    prompt_tokens: int
    latency_s: float
    cached: bool = False
    missing: int = 0
    """Options the back-end could not score (a server's top-k did not include them)."""
    compute_s: float = float("nan")
    """Back-end seconds when the answer was computed (see :class:`Completion`)."""


@dataclass
class Usage:
    """Counters a stage reads before and after its work (see :meth:`since`).

    ``calls`` and tokens count every answer, cached or not (what the method costs);
    ``seconds`` is time really spent, so a cached rerun is fast but costs the same.
    """

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: int = 0

    def copy(self) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) for f in fields(self)})

    def since(self, before: Usage) -> Usage:
        return Usage(
            **{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)}
        )


class Meter:
    """What one model, or several added up, was asked over a span of work: reads the
    counters when made and answers the difference since (:attr:`used`). The one way a
    stage or a server meters its LLMs."""

    def __init__(self, *llms: LLM) -> None:
        self._llms = llms
        self._before = self.total()

    def total(self) -> Usage:
        """The models' counters now, added up."""
        out = Usage()
        for llm in self._llms:
            for f in fields(Usage):
                setattr(out, f.name, getattr(out, f.name) + getattr(llm.usage, f.name))
        return out

    @property
    def used(self) -> Usage:
        return self.total().since(self._before)


def render_chat(
    messages: Sequence[Message], template: str | None, bos: str = "", eos: str = ""
) -> str:
    """Render messages with a model's Jinja chat template (plain text for base models).

    A final assistant message is left open so the model continues it.
    """
    msgs = list(messages)
    prefix = ""
    if msgs and msgs[-1]["role"] == "assistant":
        prefix = msgs.pop()["content"]
    if not template:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in msgs]
        return "\n\n".join(lines) + "\n\nAssistant: " + prefix
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg: str) -> None:
        raise RecfunnelError(f"chat template refused the messages: {msg}")

    env.globals["raise_exception"] = raise_exception
    text = env.from_string(template).render(
        messages=msgs, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )
    return text + prefix


class LLM(abc.ABC):
    """Cached, counted access to a language model."""

    backend: str = "base"

    def __init__(self, config: LLMConfig, cache: AnswerCache | None = None) -> None:
        self.config = config
        self.usage = Usage()
        self._cache = cache if cache is not None else (AnswerCache() if config.cache else None)
        self._lock = threading.Lock()

    # ---- identity and rendering (back-ends override) ---------------------------------
    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """What identifies the model's answers: a fingerprint of its weights (+ adapter)."""

    def render(self, messages: Sequence[Message]) -> str:
        """The exact prompt text the model sees."""
        return render_chat(messages, None)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    # ---- back-end hooks --------------------------------------------------------------
    @abc.abstractmethod
    def _complete(
        self, messages: Sequence[Message], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens)."""

    @abc.abstractmethod
    def _option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str]
    ) -> tuple[np.ndarray, int, int]:
        """(log-probs of each option's first token, prompt tokens, options not scored)."""

    def _complete_many(
        self,
        batch: Sequence[Sequence[Message]],
        max_tokens: int,
        temperature: float,
        stop: Sequence[str],
    ) -> list[tuple[str, int, int]]:
        return [self._complete(m, max_tokens, temperature, stop) for m in batch]

    def _option_logprobs_many(
        self, batch: Sequence[Sequence[Message]], options: Sequence[str]
    ) -> list[tuple[np.ndarray, int, int]]:
        return [self._option_logprobs(m, options) for m in batch]

    # ---- public, cached API ----------------------------------------------------------
    def _key(self, kind: str, messages: Sequence[Message], params: dict[str, Any],
             template: str = "") -> str:  # fmt: skip
        return answer_key(self.model_id, kind, self.render(messages), params, template)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 128,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        template: str = "",
    ) -> Completion:
        return self.complete_many(
            [messages], max_tokens=max_tokens, temperature=temperature, stop=stop,
            template=template,
        )[0]  # fmt: skip

    def complete_many(
        self,
        batch: Sequence[Sequence[Message]],
        *,
        max_tokens: int = 128,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        template: str = "",
    ) -> list[Completion]:
        """Answers for many prompts; cached ones are free, the rest go to the back-end at once.
        ``template``: the prompt template's name and version (part of the cache key)."""
        temp = self.config.temperature if temperature is None else temperature
        params = {
            "max_tokens": max_tokens,
            "temperature": temp,
            "stop": list(stop),
            "seed": self.config.seed,
            "repeat_penalty": self.config.repeat_penalty,
        }
        keys = [self._key("complete", m, params, template) for m in batch]
        out: list[Completion | None] = [self._cached_completion(k) for k in keys]
        todo = [i for i, c in enumerate(out) if c is None]
        if todo:
            try:
                answers, secs = self._timed(
                    "_complete_many",
                    lambda ms: self._complete_many(ms, max_tokens, temp, stop),
                    [batch[i] for i in todo],
                )
            except LLMUnavailable:
                self.usage.errors += 1
                raise
            for i, (text, pt, ct), per in zip(todo, answers, secs, strict=True):
                out[i] = Completion(text, pt, ct, per, False, per)
                self._store(
                    keys[i],
                    {"text": text, "prompt_tokens": pt, "completion_tokens": ct, "latency_s": per},
                )
                self._count(pt, ct, per)
        return [c for c in out if c is not None]

    def option_logprobs(self, messages: Sequence[Message], options: Sequence[str],
                        template: str = "") -> OptionScores:  # fmt: skip
        return self.option_logprobs_many([messages], options, template)[0]

    def option_logprobs_many(
        self, batch: Sequence[Sequence[Message]], options: Sequence[str], template: str = ""
    ) -> list[OptionScores]:
        """Next-token log-probabilities of ``options`` for each prompt (one forward pass
        each); ``template`` as in :meth:`complete_many`."""
        params = {"options": list(options)}
        keys = [self._key("logprobs", m, params, template) for m in batch]
        out: list[OptionScores | None] = []
        for k in keys:
            hit = self._cache.get(k) if self._cache is not None else None
            if hit is not None:
                self.usage.cache_hits += 1
                self._count(hit["prompt_tokens"], 0, 0.0)
                out.append(
                    OptionScores(np.asarray(hit["logprobs"]), hit["prompt_tokens"], 0.0, True,
                                 hit.get("missing", 0), hit.get("latency_s", float("nan")))
                )  # fmt: skip
            else:
                out.append(None)
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            try:
                answers, secs = self._timed(
                    "_option_logprobs_many",
                    lambda ms: self._option_logprobs_many(ms, options),
                    [batch[i] for i in todo],
                )
            except LLMUnavailable:
                self.usage.errors += 1
                raise
            for i, (lp, pt, missing), per in zip(todo, answers, secs, strict=True):
                lp = np.asarray(lp, dtype=np.float64)
                out[i] = OptionScores(lp, pt, per, False, missing, per)
                self._store(keys[i], {"logprobs": lp.tolist(), "prompt_tokens": pt,
                                      "missing": missing, "latency_s": per})  # fmt: skip
                self._count(pt, 0, per)
        return [o for o in out if o is not None]

    # ---- helpers ---------------------------------------------------------------------
    def _timed(
        self,
        method: str,
        call: Callable[[list[Sequence[Message]]], list[T]],
        batch: list[Sequence[Message]],
    ) -> tuple[list[T], list[float]]:
        """Answers and each one's compute seconds. A back-end that answers one prompt at a
        time is timed per prompt (so p95 latency is real); one that overrides ``method``
        to run a batch concurrently gets the batch's wall time shared equally."""
        if getattr(type(self), method) is getattr(LLM, method):
            answers, secs = [], []
            for m in batch:
                t0 = time.perf_counter()
                answers.extend(call([m]))
                secs.append(time.perf_counter() - t0)
            return answers, secs
        t0 = time.perf_counter()
        got = call(batch)
        return got, [(time.perf_counter() - t0) / max(len(batch), 1)] * len(batch)

    def _cached_completion(self, key: str) -> Completion | None:
        hit = self._cache.get(key) if self._cache is not None else None
        if hit is None:
            return None
        self.usage.cache_hits += 1
        self._count(hit["prompt_tokens"], hit["completion_tokens"], 0.0)
        return Completion(
            hit["text"], hit["prompt_tokens"], hit["completion_tokens"], 0.0, True,
            hit.get("latency_s", float("nan")),
        )  # fmt: skip

    def _store(self, key: str, value: dict[str, Any]) -> None:
        if self._cache is not None:
            self._cache.put(key, value)

    def _count(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        with self._lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
            self.usage.seconds += seconds


class TemplatedLLM(LLM):
    """A local model that renders prompts with its own chat template (llama.cpp, HF).

    Subclasses set ``_id`` (a fingerprint of the weights), ``_template``, ``_bos``, ``_eos``.
    """

    _id: str = ""
    _template: str | None = None
    _bos: str = ""
    _eos: str = ""

    @property
    def model_id(self) -> str:
        return self._id

    def render(self, messages: Sequence[Message]) -> str:
        return render_chat(messages, self._template, self._bos, self._eos)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max()
    return logits - (m + np.log(np.exp(logits - m).sum()))
