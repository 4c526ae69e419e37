"""LLM back-ends behind one protocol; :func:`build_llm` picks one from a config.

Back-end modules are imported only when asked for, so a missing optional dependency
(llama-cpp-python, torch) only matters to the back-end that needs it.
"""

from __future__ import annotations

import importlib

from recfunnel.core.errors import ConfigError
from recfunnel.llm.base import (
    LLM,
    Completion,
    LLMConfig,
    LLMUnavailable,
    Message,
    Meter,
    OptionScores,
    Usage,
)
from recfunnel.llm.cache import AnswerCache

__all__ = [
    "BACKENDS",
    "LLM",
    "PROCESS_POOL",
    "Completion",
    "LLMConfig",
    "LLMPool",
    "LLMUnavailable",
    "Message",
    "Meter",
    "OptionScores",
    "Usage",
    "build_llm",
    "llm_key",
]

BACKENDS: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("recfunnel.llm.llamacpp", "LlamaCppLLM", "llamacpp"),
    "hf": ("recfunnel.llm.hf", "HFLLM", "hf"),
    "openai": ("recfunnel.llm.openai_compat", "OpenAILLM", "openai"),
}
"""backend name -> (module, class, extra that installs its dependencies)."""


def build_llm(config: LLMConfig, cache: AnswerCache | None = None) -> LLM:
    """The back-end ``config.backend`` names, loaded with ``config`` (a back-end whose
    package is missing raises :class:`~recfunnel.core.errors.MissingDependency`)."""
    try:
        module_name, class_name, _ = BACKENDS[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown LLM backend {config.backend!r}: expected one of {', '.join(BACKENDS)}"
        ) from None
    cls: type[LLM] = getattr(importlib.import_module(module_name), class_name)
    return cls(config, cache)


def llm_key(config: LLMConfig) -> str:
    """What identifies a loaded model within a pool: its whole config."""
    return config.model_dump_json()


class LLMPool:
    """One loaded model per distinct LLM config (loading is the slow part), shared by every
    stage of a run. ``override`` answers for every config instead (a scripted model in
    tests, or the service's one model)."""

    def __init__(self, override: LLM | None = None) -> None:
        self.override = override
        self._models: dict[str, LLM] = {}

    def get(self, config: LLMConfig) -> LLM:
        if self.override is not None:
            return self.override
        key = llm_key(config)
        if key not in self._models:
            self._models[key] = build_llm(config)
        return self._models[key]

    def __len__(self) -> int:
        return len(self._models) + (self.override is not None)


PROCESS_POOL = LLMPool()
"""Models of stages that arrived by pickling (a Ray actor): loaded once per process."""
