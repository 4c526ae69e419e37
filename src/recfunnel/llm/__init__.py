"""LLM back-ends behind one protocol; :func:`build_llm` picks one from a config.

Back-end modules are imported only when asked for, so a missing optional dependency
(llama-cpp-python, torch) only matters to the back-end that needs it.
"""

from __future__ import annotations

import importlib

from recfunnel.errors import ConfigError, MissingDependency
from recfunnel.llm.base import (
    LLM,
    Completion,
    LLMConfig,
    LLMUnavailable,
    Message,
    OptionScores,
    Usage,
)
from recfunnel.llm.cache import AnswerCache

__all__ = [
    "BACKENDS",
    "LLM",
    "Completion",
    "LLMConfig",
    "LLMUnavailable",
    "Message",
    "OptionScores",
    "Usage",
    "build_llm",
]

BACKENDS: dict[str, tuple[str, str, str]] = {
    "llamacpp": ("recfunnel.llm.llamacpp", "LlamaCppLLM", "llamacpp"),
    "hf": ("recfunnel.llm.hf", "HFLLM", "hf"),
    "openai": ("recfunnel.llm.openai_compat", "OpenAILLM", "openai"),
}
"""backend name -> (module, class, extra that installs its dependencies)."""


def build_llm(config: LLMConfig, cache: AnswerCache | None = None) -> LLM:
    """The back-end ``config.backend`` names, loaded with ``config``."""
    try:
        module_name, class_name, extra = BACKENDS[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown LLM backend {config.backend!r}: expected one of {', '.join(BACKENDS)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "recfunnel":
            raise  # our own module is missing: a broken install, not a missing extra
        raise MissingDependency(
            f"the {config.backend} LLM backend needs {exc.name!r}: pip install 'recfunnel[{extra}]'"
        ) from exc
    cls: type[LLM] = getattr(module, class_name)
    return cls(config, cache)
