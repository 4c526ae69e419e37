"""What a stage call reports: counts that add up over batches and engines (a Ray run sums
them, so its figures are exact, never averages of rates), handed back with the call's
batch (``CandidateBatch.stats``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from recfunnel.llm import Usage


@dataclass
class StageStats:
    """What one stage call did, as counts that add up over batches and engines (a Ray run
    sums them, so its figures are exact, never averages of rates); :meth:`figures` turns
    them into the rates the reports print."""

    CONSTANT: ClassVar[tuple[str, ...]] = ()
    """Fields that are settings, not counts: merging keeps the first value."""

    rows: int = 0
    """Requests this call answered."""
    users: int = 0
    """Denominator of per-user figures: ``rows``, unless a router shares a path's cost
    out over every request it saw."""
    fallback_rows: int = 0

    def figures(self) -> dict[str, float]:
        """The stage's figures as JSON numbers, under their long-standing names."""
        return {"fallback_rate": self.fallback_rows / self.rows if self.rows else 0.0}

    def merge(self, other: StageStats) -> StageStats:
        """The figures of this call and ``other`` (later rows) together."""
        out = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in self.CONSTANT:
                continue
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or a is None:
                setattr(out, f.name, None if a is None or b is None else np.concatenate([a, b]))
            else:
                setattr(out, f.name, a + b)
        return out

    @staticmethod
    def merged(parts: Sequence[StageStats]) -> StageStats:
        out = parts[0]
        for p in parts[1:]:
            out = out.merge(p)
        return out


@dataclass
class LLMStats(StageStats):
    """A stage that asked an LLM: calls and tokens (cached answers count: they are what the
    method costs), seconds really spent, back-end errors, invalid outputs."""

    llm_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    llm_errors: int = 0
    outputs: int = 0
    """LLM outputs parsed (the denominator of the invalid rate)."""
    invalid_outputs: int = 0
    invalid_rows: int = 0
    row_seconds: np.ndarray | None = None
    """Each row's LLM compute time, as measured when the answer was computed (kept with
    cached answers, so a cached rerun still reports the real cost)."""

    def add_usage(self, used: Usage) -> None:
        self.llm_calls += used.calls
        self.cache_hits += used.cache_hits
        self.prompt_tokens += used.prompt_tokens
        self.completion_tokens += used.completion_tokens
        self.llm_seconds += used.seconds
        self.llm_errors += used.errors

    def figures(self) -> dict[str, float]:
        per, rows = max(self.users, 1), self.rows
        return {
            **super().figures(),
            "llm_calls": float(self.llm_calls),
            "cache_hits": float(self.cache_hits),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
            "llm_seconds": float(self.llm_seconds),
            "llm_errors": float(self.llm_errors),
            "llm_calls_per_user": self.llm_calls / per,
            "prompt_tokens_per_user": self.prompt_tokens / per,
            "completion_tokens_per_user": self.completion_tokens / per,
            "invalid_rate": self.invalid_outputs / self.outputs if self.outputs else 0.0,
            "invalid_row_rate": self.invalid_rows / rows if rows else 0.0,
        }
