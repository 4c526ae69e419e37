"""The stage contract: what every funnel stage is, receives, returns and reports.

A pipeline is an ordered list of stages. Each stage is a small class with a typed config
(``kind`` picks it in TOML), learned state in attributes ending in ``_``, and one batched
call over requests and the :class:`Trace` so far that returns a
:class:`~recfunnel.core.candidates.CandidateBatch` (scores plus named per-candidate
features in ``extras``). How a stage's output joins the trace is its ``mode``:

- ``pool`` (retrievers): a candidate pool of its own, kept by name; the first one is the
  list so far until a ``list`` stage merges them;
- ``list`` (fusion): replaces the list so far;
- ``head`` (rankers, rerankers, LLM feature stages): reorders (or annotates) the top
  ``top_n`` of the list so far; the funnel puts the untouched tail back behind it, so a
  weak stage can only move what it was shown and recall beyond the head is never lost;
- ``note`` (explanations): annotates the final list without changing it.

Stages learn in two steps, as LensKit's components do: :meth:`Stage.fit` on the training
split (``fit`` returns ``self``, as in scikit-learn), and the optional :meth:`Stage.tune`
on validation users (a learned ranker's training, a blend weight's calibration), which
receives the trace of the stages before it on those users.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, TypeVar

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch, cut, prev_ranks
from recfunnel.core.config import Strict
from recfunnel.core.types import Catalog, EvalSet, Interactions, Request, Split
from recfunnel.llm import PROCESS_POOL, LLMPool

if TYPE_CHECKING:
    from recfunnel.llm import LLM, LLMConfig, Usage

Mode = Literal["pool", "list", "head", "note"]


class StageConfig(Strict):
    """What every stage config has: the ``kind`` that picks the stage (see
    :mod:`recfunnel.stages.registry`) and an optional ``name`` for its trace entry."""

    kind: str
    name: str | None = Field(
        None, description="the stage's name in the trace (default: family:kind)"
    )


C = TypeVar("C", bound=StageConfig)


# ---- what a stage reports ------------------------------------------------------------
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


# ---- what a stage receives ------------------------------------------------------------
@dataclass
class Trace:
    """Everything a pipeline run produced, stage by stage: what evaluation, diagnosis,
    serving and the Ray engine all read."""

    requests: Sequence[Request]
    k: int
    """Items the caller wants."""
    depth: int
    """Depth of each candidate pool (at least ``k``)."""
    final: CandidateBatch | None = None
    """The ranked list so far; after the run, the answer (cut to ``k``)."""
    batches: dict[str, CandidateBatch] = field(default_factory=dict)
    """Each stage's own output, by stage name, in stage order (retrievers' pools, the
    fused list, each head stage's reordered head)."""
    modes: dict[str, Mode] = field(default_factory=dict)
    inputs: dict[str, CandidateBatch] = field(default_factory=dict)
    """The whole list each head stage was given (its head's tail follows the stage's
    output; calibration and the position probe compare with it)."""
    notes: dict[str, CandidateBatch] = field(default_factory=dict)
    """Output of ``note`` stages (explanations), which never change the list."""
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, StageStats] = field(default_factory=dict)
    route: str | None = None
    """Which path answered (a router's "cold"/"warm"); None for a plain funnel."""
    pending: bool = False
    """After ``prepare``: whether LLM stages are still to run (a server runs them within
    its latency budget; the list so far is what it falls back to)."""
    parts: list[tuple[str, np.ndarray, Trace]] | None = None
    """A router's prepared sub-traces: (path, rows, trace)."""

    @property
    def pools(self) -> dict[str, CandidateBatch]:
        """The retrieval pools, by stage name."""
        return {n: b for n, b in self.batches.items() if self.modes.get(n) == "pool"}

    def head(self, top_n: int) -> CandidateBatch:
        """The top ``top_n`` of the list so far, with each item's rank in it
        (``extras["prev_rank"]``, kept when the position probe shuffles the listing)."""
        assert self.final is not None, "no list yet: the pipeline starts with retrieval"
        f = self.final
        return CandidateBatch(f.items[:, :top_n], f.scores[:, :top_n], f.stage, f.fallback,
                              {"prev_rank": prev_ranks(f)[:, :top_n]})  # fmt: skip

    def take(self, rows: np.ndarray) -> Trace:
        """The trace restricted to ``rows`` (indices), for a stage that runs on some rows."""
        return Trace(
            [self.requests[int(i)] for i in rows], self.k, self.depth,
            None if self.final is None else self.final.take(rows),
            {n: b.take(rows) for n, b in self.batches.items()}, dict(self.modes),
            {n: b.take(rows) for n, b in self.inputs.items()},
        )  # fmt: skip

    @property
    def explanations(self) -> list[list[Any]] | None:
        """Per request, the reasons a ``note`` stage wrote for its top items (None: no
        explanation stage ran)."""
        for batch in self.notes.values():
            if "explanation" in batch.extras:
                return [[e for e in row if e is not None] for row in batch.extras["explanation"]]
        return None


@dataclass
class FitContext:
    """What a stage may learn from when it is fitted."""

    train: Interactions
    catalog: Catalog
    seed: int = 0
    llms: LLMPool = field(default_factory=LLMPool)
    """The run's loaded models: one per distinct LLM config."""
    earlier: Sequence[Stage[Any]] = ()
    """This pipeline's stages fitted before this one (a ranker reuses their models)."""


@dataclass
class TuneContext:
    """What a stage may learn from on validation users, besides the users themselves."""

    split: Split
    """The protocol's split: its test users must never teach anything (leakage guards)."""
    catalog: Catalog
    seed: int
    before: Callable[[Sequence[Request], int], Trace]
    """Runs the stages before this one (as fitted) on requests, to a depth."""
    refit_before: Callable[[Interactions], Callable[[Sequence[Request], int], Trace]]
    """The stages before this one fitted afresh on other training data: a runner like
    ``before``. Simulated users' lists must come from models that never saw their
    future (see :mod:`recfunnel.stages.rank.lists`)."""


# ---- the contract ---------------------------------------------------------------------
class Stage(abc.ABC, Generic[C]):
    """Base of every stage: ``fit`` once, optionally ``tune``, then call in batches."""

    family: ClassVar[str]
    """retrieve, fuse, rank, rerank, llm or explain: the trace's name prefix."""
    mode: ClassVar[Mode]
    config_class: ClassVar[type[StageConfig]]
    uses_llm: ClassVar[bool] = False
    """Runs after ``prepare`` (a server's fallback is the list before the first one)."""
    probed: ClassVar[bool] = False
    """The position probe shuffles this stage's input listing (rerankers)."""
    shareable: ClassVar[bool] = False
    """A pure function of the training data: fitted once per run for identical configs
    (pipelines of one experiment share their retrievers)."""

    def __init__(self, config: C | None = None) -> None:
        default: Any = self.config_class
        self.config: C = config if config is not None else default()

    @property
    def name(self) -> str:
        return self.config.name or f"{self.family}:{self.config.kind}"

    @property
    def top_n(self) -> int:
        """How much of the list so far a ``head`` stage reads."""
        return int(getattr(self.config, "top_n", 0))

    def fit(self, ctx: FitContext) -> Self:
        """Learn from the training split; learned state goes in attributes ending in ``_``."""
        return self

    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any] | None:
        """Learn from validation users (never test users); returns what was learned, for
        the run's record. Stages that learn nothing here leave this alone."""
        return None

    @property
    def tunes(self) -> bool:
        return type(self).tune is not Stage.tune

    @property
    def tune_users(self) -> int | None:
        """Validation users :meth:`tune` reads (a seeded sample; None: all)."""
        return None

    @abc.abstractmethod
    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        """This stage's output for every request, given the trace so far."""

    def stats(self) -> StageStats | None:
        """Figures of the last call (LLM calls, tokens, invalid outputs); None: none."""
        return None


class LLMStage(Stage[C]):
    """A stage that asks an LLM (``config.llm``). The model comes from the run's pool at
    fit time; a pickled copy (a Ray actor) loads it from its own process's pool."""

    uses_llm = True

    def fit(self, ctx: FitContext) -> Self:
        self._llm: LLM | None = ctx.llms.get(self.llm_config)
        return self

    @property
    def llm_config(self) -> LLMConfig:
        llm: LLMConfig = self.config.llm  # type: ignore[attr-defined]
        return llm

    @property
    def llm(self) -> LLM:
        if getattr(self, "_llm", None) is None:
            self._llm = PROCESS_POOL.get(self.llm_config)
        assert self._llm is not None
        return self._llm

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_llm"] = None  # a loaded model does not travel; the receiver loads its own
        return state


def noun_for(config: Any, catalog: Catalog) -> Any:
    """A config whose ``noun`` (what prompts call an item) defaults to the catalog's."""
    if getattr(config, "noun", None) == "item" and catalog.noun != "item":
        return config.model_copy(update={"noun": catalog.noun})
    return config


def positions(items: np.ndarray) -> np.ndarray:
    """Each cell's column, -1 for padding: the input position of an unmoved head."""
    return np.where(items != PAD, np.arange(items.shape[1])[None, :], -1)


__all__ = [
    "FitContext",
    "LLMStage",
    "LLMStats",
    "Mode",
    "Stage",
    "StageConfig",
    "StageStats",
    "Trace",
    "TuneContext",
    "cut",
    "noun_for",
    "positions",
]
