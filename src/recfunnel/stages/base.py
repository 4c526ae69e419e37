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
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    Self,
    TypeVar,
    runtime_checkable,
)

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import CandidateBatch, cut, prev_ranks
from recfunnel.core.config import Strict
from recfunnel.core.errors import NotFittedError
from recfunnel.core.types import Catalog, EvalSet, Interactions, Request, Split
from recfunnel.llm import PROCESS_POOL, LLMConfig, LLMPool, Meter
from recfunnel.stages.stats import LLMStats, StageStats
from recfunnel.stages.text import PromptStyle

if TYPE_CHECKING:
    from recfunnel.llm import LLM

Mode = Literal["pool", "list", "head", "note"]


class StageConfig(Strict):
    """What every stage config has: the ``kind`` that picks the stage (see
    :mod:`recfunnel.stages.registry`) and an optional ``name`` for its trace entry."""

    kind: str
    name: str | None = Field(
        None, description="the stage's name in the trace (default: family:kind)"
    )


class LLMStageConfig(StageConfig):
    """What every stage that asks an LLM has: the model, how much of the history and of
    each title its prompts show, what they call an item, and the seed of its shuffles.
    A stage whose defaults differ (the rerankers show more history) redeclares the field."""

    history_items: int = Field(5, ge=0, description="most recent history items shown")
    title_chars: int = Field(40, ge=8, description="titles are cut to this many characters")
    noun: str = Field(
        "item", description="what the prompt calls an item (movie, artist…; default: the "
        "catalog's own)",
    )  # fmt: skip
    seed: int = 0
    llm: LLMConfig = Field(default_factory=LLMConfig)


C = TypeVar("C", bound=StageConfig)


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
        """The trace restricted to ``rows`` (indices), for a stage that runs on some rows:
        every per-row output taken, the run's timings and figures kept as they are."""
        return dataclasses.replace(
            self, requests=[self.requests[int(i)] for i in rows],
            final=None if self.final is None else self.final.take(rows),
            batches={n: b.take(rows) for n, b in self.batches.items()}, modes=dict(self.modes),
            inputs={n: b.take(rows) for n, b in self.inputs.items()},
            notes={n: b.take(rows) for n, b in self.notes.items()},
            timings=dict(self.timings), stats=dict(self.stats), parts=None,
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
    keeps_order: ClassVar[bool] = False
    """A ``head`` stage that annotates its head without reordering it (LLM features): the
    funnel checks the order is kept and records no input positions for it."""

    def __init__(self, config: C | None = None) -> None:
        default: Any = self.config_class
        self.config: C = config if config is not None else default()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every stage's ``fit`` marks it fitted and its ``__call__`` refuses to run before:
        the contract's rule kept by the base class, so no stage checks it by hand."""
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _marks_fitted(cls.__dict__["fit"])  # type: ignore[method-assign]
        if "__call__" in cls.__dict__:
            cls.__call__ = _needs_fit(cls.__dict__["__call__"])  # type: ignore[method-assign]

    @property
    def fitted(self) -> bool:
        return bool(self.__dict__.get("fitted_", False))

    @property
    def name(self) -> str:
        return self.config.name or f"{self.family}:{self.config.kind}"

    @property
    def top_n(self) -> int:
        """How much of the list so far a ``head`` stage reads."""
        return int(getattr(self.config, "top_n", 0))

    def fit(self, ctx: FitContext) -> Self:
        """Learn from the training split; learned state goes in attributes ending in ``_``
        (never into ``config``: it stays what the user asked for)."""
        self.fitted_ = True
        return self

    def tune(self, valid: EvalSet, ctx: TuneContext) -> dict[str, Any] | None:
        """Learn from validation users (never test users); returns what was learned, for
        the run's record. Stages that learn nothing here leave this alone."""
        return None

    @property
    def tunes(self) -> bool:
        return type(self).tune is not Stage.tune

    def refit_config(self) -> StageConfig:
        """The config that fits this stage afresh on other training data as it was chosen
        here: its config with what :meth:`tune` picked fixed (a grid's choice). The learned
        ranker's simulated lists refit the stages before it with it; the stage's own
        ``config`` stays what the user wrote."""
        return self.config

    @property
    def tune_users(self) -> int | None:
        """Validation users :meth:`tune` reads (a seeded sample; None: all)."""
        return None

    @abc.abstractmethod
    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        """This stage's output for every request, given the trace so far; what the call did
        (LLM calls, tokens, invalid outputs) comes back in the batch's ``stats``. A call
        leaves the stage as it found it."""


F = TypeVar("F", bound=Callable[..., Any])


def _marks_fitted(fit: F) -> F:
    @functools.wraps(fit)
    def wrapper(self: Stage[Any], ctx: FitContext) -> Any:
        out = fit(self, ctx)
        self.fitted_ = True
        return out

    return wrapper  # type: ignore[return-value]


def _needs_fit(call: F) -> F:
    @functools.wraps(call)
    def wrapper(self: Stage[Any], *args: Any, **kwargs: Any) -> Any:
        if not self.fitted:
            raise NotFittedError(f"{self.name} is not fitted: call fit() before asking it")
        return call(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@runtime_checkable
class Explainable(Protocol):
    """A stage whose learned model can say what each feature is worth on given users
    (the learned ranker's permutation importance, read by the diagnosis)."""

    def permutation_importance(self, requests: Sequence[Request], trace: Trace,
                               truth: Sequence[np.ndarray], repeats: int = 5,
                               seed: int = 0) -> dict[str, dict[str, float]]: ...  # fmt: skip


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

    def prompt_style(self, catalog: Catalog, **extra: Any) -> PromptStyle:
        """How this stage's prompts show items, from its config (``noun`` defaulting to
        what the catalog calls its items): built once, at fit time."""
        c: Any = noun_for(self.config, catalog)
        return PromptStyle(noun=c.noun, history_items=c.history_items,
                           title_chars=c.title_chars, **extra)  # fmt: skip

    def meter(self) -> Meter:
        """Counts what this stage's model is asked from now on (see :class:`Meter`)."""
        return Meter(self.llm)

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


__all__ = [
    "Explainable",
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
]
