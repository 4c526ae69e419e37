"""How an LLM's answer becomes a score, in one place for every stage that asks it: the
verbalizer's label log-probs renormalised over the labels listed, and the pointwise P(yes)
of a yes/no answer."""

from __future__ import annotations

import numpy as np


def over_listed(logprobs: np.ndarray) -> np.ndarray:
    """Label log-probs renormalised over the labels a prompt listed (the last axis), so
    scores from prompts of different lengths are on one footing."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return lp - np.logaddexp.reduce(lp, axis=-1, keepdims=True)


def p_yes(logprobs: np.ndarray) -> np.ndarray:
    """P(yes) from [log p(yes), log p(no)] on the last axis, renormalised over the two."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return np.exp(lp[..., 0] - np.logaddexp(lp[..., 0], lp[..., 1]))
