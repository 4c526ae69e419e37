"""What a command says when an LLM stage's back-end did not answer.

Each failed HTTP attempt and each chunk a stage kept in its input order logs a warning;
a dead server gives dozens. :class:`RetryDigest` holds them back while a run goes on and
tells them once per stage at the end (retries, failed calls, the last cause), and
:func:`llm_fallbacks` reads from the results which LLM stages fell back and how often, so
the table can mark those rows and ``eval`` can refuse a run in which an LLM stage
answered no row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

RETRY_MESSAGE = "%s failed (%s); retry %d/%d in %.2fs"
"""The OpenAI-compatible client's warning before each retry."""
UNAVAILABLE = re.compile(r"^%s: back-end unavailable \(%s\)")
"""An LLM stage's warning when a chunk falls back to its input order."""


@dataclass
class StageFailures:
    """One stage's failed LLM calls (as its warnings told them)."""

    calls: int = 0
    retries: int = 0
    cause: str = ""


@dataclass
class RetryDigest(logging.Filter):
    """Holds back the per-call retry and fallback warnings; counts them by stage."""

    stages: dict[str, StageFailures] = field(default_factory=dict)
    pending_retries: int = 0
    """Retries not yet followed by a stage's fallback (they recovered, or are ongoing)."""
    recovered: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == RETRY_MESSAGE:
            self.pending_retries += 1
            return False
        if isinstance(record.msg, str) and UNAVAILABLE.match(record.msg) and record.args:
            name, exc = record.args[0], record.args[1]  # type: ignore[index]
            st = self.stages.setdefault(str(name), StageFailures())
            st.calls += 1
            st.retries += self.pending_retries
            self.pending_retries = 0
            st.cause = _cause(str(exc))
            return False
        return True

    def lines(self) -> list[str]:
        """One line per stage whose LLM calls failed, and one for retries that recovered."""
        out = [
            f"{name}: {st.calls} batch{'es' * (st.calls != 1)} of LLM calls failed, "
            f"{st.retries} retr{'ies' if st.retries != 1 else 'y'} in all ({st.cause}); "
            f"their rows kept the previous stage's order"
            for name, st in self.stages.items()
        ]
        if self.pending_retries:
            out.append(f"{self.pending_retries} LLM request(s) were retried and then answered")
        return out


def _cause(message: str) -> str:
    """The root cause of an ``LLMUnavailable`` message ("…; last error: X" → X)."""
    return message.rsplit("last error: ", 1)[-1].strip()


@contextmanager
def digest_llm_warnings(enabled: bool = True) -> Iterator[RetryDigest]:
    """While inside, the retry and fallback warnings are counted, not printed (on every
    handler of the root logger, where ``setup_output`` sends them)."""
    digest = RetryDigest()
    handlers = list(logging.getLogger().handlers) if enabled else []
    for h in handlers:
        h.addFilter(digest)
    try:
        yield digest
    finally:
        for h in handlers:
            h.removeFilter(digest)


@dataclass
class Fallback:
    """An LLM stage of one pipeline that fell back on some rows (means over seeds)."""

    pipeline: str
    stage: str
    fallback_rate: float
    invalid_rate: float
    llm_errors: float
    answered_none: bool
    """No row of any seed got an LLM answer."""


def llm_fallbacks(result: Any) -> list[Fallback]:
    """The LLM stages (those that report ``llm_calls``) whose rows fell back, by pipeline,
    from an :class:`~recfunnel.evaluate.runner.ExperimentResult`."""
    by: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in result.results:
        for stage, figures in run.stages.items():
            if "llm_calls" in figures:
                by.setdefault((run.pipeline, stage), []).append(figures)
    out = []
    for (pipeline, stage), runs in by.items():
        fb = [f.get("fallback_rate", 0.0) for f in runs]
        if max(fb) <= 0:
            continue
        mean = {k: sum(f.get(k, 0.0) for f in runs) / len(runs)
                for k in ("fallback_rate", "invalid_rate", "llm_errors")}  # fmt: skip
        out.append(Fallback(pipeline, stage, float(mean["fallback_rate"]),
                            float(mean["invalid_rate"]), float(mean["llm_errors"]),
                            answered_none=min(fb) >= 1.0))  # fmt: skip
    return out
