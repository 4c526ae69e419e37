"""A scripted stand-in LLM for unit tests of parsing, aggregation and fallbacks.

Every LLM path also has a test against the real bundled model (tests/integration).
"""

from collections.abc import Callable, Sequence

import numpy as np

from recfunnel.llm.base import LLM, LLMConfig, LLMUnavailable, Message


class ScriptedLLM(LLM):
    """Answers from a function of the prompt text; counts calls; can be switched off."""

    backend = "scripted"

    def __init__(self, logprobs: Callable[[str, Sequence[str]], np.ndarray] | None = None,
                 text: Callable[[str], str] | None = None) -> None:  # fmt: skip
        super().__init__(LLMConfig(cache=False))
        self.logprobs_fn = logprobs
        self.text_fn = text
        self.down = False
        self.prompts: list[str] = []

    @property
    def model_id(self) -> str:
        return "scripted"

    def _complete(self, messages: Sequence[Message], max_tokens, temperature, stop):
        if self.down:
            raise LLMUnavailable("scripted outage")
        p = self.render(messages)
        self.prompts.append(p)
        text = self.text_fn(p)
        cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
        return (text[:cut] if cut >= 0 else text), len(p) // 4, 10  # stops, as back-ends do

    def _option_logprobs(self, messages: Sequence[Message], options):
        if self.down:
            raise LLMUnavailable("scripted outage")
        p = self.render(messages)
        self.prompts.append(p)
        return self.logprobs_fn(p, options), len(p) // 4, 0
