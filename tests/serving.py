"""A service on real ml-latest-small with a scripted LLM (fast, and its answers known)."""

from __future__ import annotations

import re

import numpy as np

from recfunnel.serve.config import ServeConfig
from recfunnel.serve.service import Service
from scripted import ScriptedLLM


def reverse_order(prompt: str, options) -> np.ndarray:
    """The verbalizer prefers the last-listed candidate; the chat picks `recommend`."""
    if "What should you do next?" in prompt:
        letters = dict(re.findall(r"^([A-Z])\. (\w+):", prompt, flags=re.M))
        return np.array([1.0 if letters.get(o) == "recommend" else 0.0 for o in options])
    return np.arange(len(options), dtype=float)


def make_service(data, llm=None, **config) -> Service:
    config = {"warmup": True, "rate_limit": None, **config}
    return Service(
        ServeConfig(**config), dataset=data, llm=llm or ScriptedLLM(logprobs=reverse_order)
    )
