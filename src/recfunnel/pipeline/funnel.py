"""The funnel: a pipeline's stages, fitted, tuned and run in order over batches of requests.

Evaluation, serving and the batch engines all call :meth:`Funnel.run` (or its two halves,
:meth:`Funnel.prepare` and :meth:`Funnel.finish`), and every stage's output is kept in the
returned :class:`~recfunnel.stages.base.Trace`, so diagnostics read the same objects
serving returns.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import numpy as np
from pydantic import BaseModel

from recfunnel.core.candidates import (
    PAD,
    CandidateBatch,
    cut,
    locate,
    merge_head,
    permutes,
    shuffled_head,
)
from recfunnel.core.errors import ConfigError, NotFittedError, StageContractError
from recfunnel.core.types import Catalog, EvalSet, Interactions, Request, Split
from recfunnel.llm import LLM, LLMPool
from recfunnel.pipeline.config import PipelineConfig
from recfunnel.pipeline.protocol import RowPicker
from recfunnel.stages.base import FitContext, LLMStats, Stage, StageConfig, Trace, TuneContext
from recfunnel.stages.registry import missing_extra, stage_class

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def with_seed(config: M, seed: int) -> M:
    """The same config with its ``seed`` field (if any) set: one seed drives a whole run."""
    fields = type(config).model_fields
    return config.model_copy(update={"seed": seed}) if "seed" in fields else config


@dataclass
class Shared:
    """What the pipelines of one run share: fitted stages with identical configs (fitted
    once), and the loaded LLMs (one per distinct config)."""

    stages: dict[str, Stage[Any]] = field(default_factory=dict)
    llms: LLMPool = field(default_factory=LLMPool)

    @classmethod
    def with_llm(cls, llm: LLM | None) -> Shared:
        """A run whose every LLM stage asks ``llm`` (a scripted model, the service's one)."""
        return cls(llms=LLMPool(override=llm))


def calibration_set(valid: EvalSet | None, users: int | None, seed: int) -> EvalSet:
    """The validation users a stage may learn from (a seeded sample of ``users``)."""
    if valid is None or len(valid) == 0:
        raise ConfigError(
            "stages that learn from validation users (ltr, a rerank calibration, exposure) "
            "need them: set protocol.n_valid > 0 (cold-start)"
        )
    if users is None or users >= len(valid):
        return valid
    pick = np.sort(np.random.default_rng(seed).choice(len(valid), users, replace=False))
    return EvalSet([valid.requests[i] for i in pick], [valid.truth[i] for i in pick])


def rows_with_target(evalset: EvalSet) -> RowPicker:
    """Rows whose probed-stage input holds a relevant item (``rerank_users =
    "target-in-input"``); requests are matched by identity, so a router's subsets work."""
    truth = {id(r): t for r, t in zip(evalset.requests, evalset.truth, strict=True)}

    def rows(requests: Sequence[Request], head: CandidateBatch) -> np.ndarray:
        return np.array(
            [np.isin(truth[id(r)], head.items[i]).any() for i, r in enumerate(requests)],
            dtype=bool,
        )

    return rows


class Funnel:
    """One configured pipeline over one seed. ``shared`` lets pipelines of one run share
    fitted stages (same config + seed = same model) and loaded LLMs."""

    def __init__(self, config: PipelineConfig, seed: int = 0, shared: Shared | None = None) -> None:
        self.config = config
        self.seed = seed
        self.shared = shared if shared is not None else Shared()
        self.stages_: list[Stage[Any]] = []
        self.names_: list[str] = []
        self.tuned_: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """A fitted funnel travels (Ray ships it) without the run's shared models: its LLM
        stages load their own where they land."""
        return {**self.__dict__, "shared": Shared()}

    # ---- learning ------------------------------------------------------------------
    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        """Fit every stage on the training split, in order."""
        self.catalog_ = catalog
        t0 = time.perf_counter()
        self.stages_, self.names_ = self._fit_stages(train, catalog, self.shared)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _fit_stages(
        self, train: Interactions, catalog: Catalog, shared: Shared,
        configs: Sequence[StageConfig] | None = None,
    ) -> tuple[list[Stage[Any]], list[str]]:  # fmt: skip
        stages: list[Stage[Any]] = []
        names: list[str] = []
        for i, raw in enumerate(self.config.stages if configs is None else configs):
            config = with_seed(raw, self.seed)
            cls = stage_class(config.kind)
            key = f"{id(train)}:" + config.model_dump_json(exclude={"name"})
            stage = shared.stages.get(key) if cls.shareable else None
            if stage is None:
                ctx = FitContext(train, catalog, self.seed, shared.llms, list(stages))
                try:
                    stage = cls(config).fit(ctx)
                except ImportError as exc:
                    raise missing_extra(config.kind, exc) from exc
                if cls.shareable:
                    shared.stages[key] = stage
            elif stage.config != config:
                # the fitted model is shared; the name this pipeline gave it is its own
                stage = copy.copy(stage)
                stage.config = config
            name = stage.name if stage.name not in names else f"{stage.name}#{i + 1}"
            stages.append(stage)
            names.append(name)
        return stages, names

    def tune(self, split: Split) -> dict[str, Any]:
        """What the stages learn from validation users, in order (a learned ranker, a
        blend weight), each on the trace of the stages before it; returns it by stage."""
        self.tuned_ = {}
        for i, (name, stage) in enumerate(zip(self.names_, self.stages_, strict=True)):
            if not stage.tunes:
                continue
            valid = calibration_set(split.valid, stage.tune_users, split.seed)
            ctx = TuneContext(split, self.catalog_, self.seed, self._before(i),
                              functools.partial(self._refit, upto=i))  # fmt: skip
            info = stage.tune(valid, ctx)
            if info is not None:
                self.tuned_[name] = info
        return self.tuned_

    def run_before(self, name: str, requests: Sequence[Request], k: int) -> Trace:
        """The trace of the stages before stage ``name`` (what that stage is given)."""
        self.stage(name)  # names it or raises
        return self._before(self.names_.index(name))(requests, k)

    def _before(self, upto: int) -> Callable[[Sequence[Request], int], Trace]:
        """Runs this funnel's stages before ``upto``."""

        def run(requests: Sequence[Request], k: int) -> Trace:
            return self._run(self.stages_, self.names_, requests, k, 0, upto)

        return run

    def _refit(self, train: Interactions, upto: int) -> Callable[[Sequence[Request], int], Trace]:
        """The stages before ``upto`` fitted on ``train`` (shared within this refit only), each
        with what it learned on validation users fixed (a tuned grid's choice)."""
        configs = [s.refit_config() for s in self.stages_[:upto]]
        stages, names = self._fit_stages(train, self.catalog_, Shared(llms=self.shared.llms),
                                         configs)  # fmt: skip
        return lambda reqs, k: self._run(stages, names, reqs, k, 0, upto)

    def pending(self, prepared: Trace) -> bool:
        """Whether :meth:`finish` still has LLM stages to run after :meth:`prepare` (a
        server runs them within its latency budget; the list so far is its fallback)."""
        return any(s.uses_llm for s in self.stages_[self.split_at :])

    def named_stages(self) -> list[tuple[str, Stage[Any]]]:
        return list(zip(self.names_, self.stages_, strict=True))

    def stage(self, name: str) -> Stage[Any]:
        """The fitted stage whose trace entry is ``name``."""
        if name not in self.names_:
            raise KeyError(f"no stage {name!r} in {self.config.name!r}: {self.names_}")
        return self.stages_[self.names_.index(name)]

    # ---- running -------------------------------------------------------------------
    @property
    def split_at(self) -> int:
        """Index of the first LLM stage: :meth:`prepare` runs the stages before it."""
        return next((i for i, s in enumerate(self.stages_) if s.uses_llm), len(self.stages_))

    @property
    def probe_stage(self) -> str | None:
        """The stage the position probe shuffles the input of (the first reranker)."""
        return next((n for n, s in zip(self.names_, self.stages_, strict=True) if s.probed), None)

    def run(self, requests: Sequence[Request], k: int, shuffle: int | None = None,
            rows: RowPicker | None = None) -> Trace:  # fmt: skip
        """Rank ``k`` items for every request, keeping each stage's output.

        ``shuffle`` (a seed) shuffles the probed stage's input listing first: a position
        probe, since a reranker that reads its candidates should not care. ``rows`` picks
        the rows the probed stage runs for; the others keep their order."""
        return self.finish(requests, self.prepare(requests, k), k, shuffle, rows)

    def prepare(self, requests: Sequence[Request], k: int,
                narrow: Callable[[np.ndarray], np.ndarray] | None = None) -> Trace:  # fmt: skip
        """Every stage before the first LLM stage. Its ``final`` is the order a server falls
        back to when the LLM stages cannot answer in time; ``narrow`` maps that (one-row)
        list to the items allowed, in order (the chat's filter)."""
        if not self.stages_:
            raise NotFittedError(f"pipeline {self.config.name!r}: call fit() before run()")
        trace = self._run(self.stages_, self.names_, requests, k, 0, self.split_at)
        if narrow is not None:
            t0 = time.perf_counter()
            trace.final = narrowed(trace, narrow)
            trace.timings["filter"] = time.perf_counter() - t0
        return trace

    def finish(self, requests: Sequence[Request], prepared: Trace, k: int,
               shuffle: int | None = None, rows: RowPicker | None = None) -> Trace:  # fmt: skip
        """The stages from the first LLM stage on, over :meth:`prepare`'s trace; the answer
        is cut to ``k``."""
        trace = self._continue(prepared, self.stages_, self.names_, requests, self.split_at,
                               len(self.stages_), shuffle, rows)  # fmt: skip
        assert trace.final is not None
        trace.final = cut(trace.final, k)
        return trace

    def _run(self, stages: list[Stage[Any]], names: list[str], requests: Sequence[Request],
             k: int, start: int, stop: int) -> Trace:  # fmt: skip
        trace = Trace(requests, k, max(k, self.config.pool_size))
        return self._continue(trace, stages, names, requests, start, stop, None, None)

    def _continue(self, prepared: Trace, stages: list[Stage[Any]], names: list[str],
                  requests: Sequence[Request], start: int, stop: int, shuffle: int | None,
                  rows: RowPicker | None) -> Trace:  # fmt: skip
        trace = dataclasses.replace(
            prepared, batches=dict(prepared.batches), modes=dict(prepared.modes),
            inputs=dict(prepared.inputs), notes=dict(prepared.notes),
            timings=dict(prepared.timings), stats=dict(prepared.stats),
            parts=None,
        )  # fmt: skip
        for stage, name in zip(stages[start:stop], names[start:stop], strict=True):
            probed = stage.probed and name == self.probe_stage
            self._apply(stage, name, trace, requests, shuffle if probed else None,
                        rows if probed else None)  # fmt: skip
        return trace

    def _apply(self, stage: Stage[Any], name: str, trace: Trace, requests: Sequence[Request],
               shuffle: int | None, rows: RowPicker | None) -> None:  # fmt: skip
        t0 = time.perf_counter()
        if stage.mode == "head":
            assert trace.final is not None
            if shuffle is not None:
                trace.final = shuffled_head(trace.final, stage.top_n, shuffle)
            trace.inputs[name] = trace.final
            head = trace.head(stage.top_n)
            if rows is not None:
                out = self._some(stage, trace, requests, head, rows(requests, head))
            else:
                out = stage(requests, trace)
            out = head_output(stage, name, out, head)
            trace.final = merge_head(out, trace.final)
        else:
            out = stage(requests, trace)
            if stage.mode == "list" or (stage.mode == "pool" and trace.final is None):
                trace.final = out
        if stage.mode == "note":
            trace.notes[name] = out
        else:
            trace.batches[name] = out
            trace.modes[name] = stage.mode
        trace.timings[name] = time.perf_counter() - t0
        if out.stats is not None:
            trace.stats[name] = out.stats

    @staticmethod
    def _some(stage: Stage[Any], trace: Trace, requests: Sequence[Request],
              head: CandidateBatch, rows: np.ndarray) -> CandidateBatch:  # fmt: skip
        """Run a head stage on ``rows`` only; the others pass through in input order."""
        pick = np.flatnonzero(rows)
        done = stage([requests[int(i)] for i in pick], trace.take(pick))
        items, scores = head.items.copy(), head.scores.copy()
        items[pick], scores[pick] = done.items, done.scores
        fallback = np.zeros(len(head), dtype=bool)
        if done.fallback is not None:
            fallback[pick] = done.fallback
        extras: dict[str, np.ndarray] = {"prev_rank": head.extras["prev_rank"].copy()}
        for key, value in done.extras.items():
            if key == "input_pos":
                continue  # derived by the funnel over the whole head
            if key not in extras:
                extras[key] = np.full(head.items.shape, np.nan)
            extras[key][pick] = value
        st = done.stats
        if isinstance(st, LLMStats) and st.row_seconds is not None:
            # per-row figures cover the rows run only: the others cost no LLM time
            full = np.zeros(len(head))
            full[pick] = st.row_seconds
            st = dataclasses.replace(st, row_seconds=full)
        return CandidateBatch(items, scores, done.stage, fallback, extras, st)


def head_output(stage: Stage[Any], name: str, out: CandidateBatch,
                head: CandidateBatch) -> CandidateBatch:  # fmt: skip
    """A head stage's output, checked and completed by the one rule every head stage obeys:
    it returns its head's items in some order (refused otherwise, naming the stage), and
    each item's position in that head (``extras["input_pos"]``) is derived here, once."""
    bad = np.flatnonzero(~permutes(out.items, head.items))
    if len(bad):
        raise StageContractError(
            f"stage {name!r} ({stage.config.kind}) returned a list that is not a "
            f"permutation of its head of {head.depth} candidates (rows {bad[:5].tolist()}): "
            "a head stage may only reorder what it was given"
        )
    extras = dict(out.extras)
    if stage.keeps_order:
        if not np.array_equal(out.items, head.items):
            raise StageContractError(
                f"stage {name!r} ({stage.config.kind}) keeps its input order by contract "
                "but returned another order"
            )
        extras.pop("input_pos", None)
    else:
        extras["input_pos"] = locate(out.items, head.items)
    return dataclasses.replace(out, extras=extras)


def narrowed(trace: Trace, narrow: Callable[[np.ndarray], np.ndarray]) -> CandidateBatch:
    """The trace's (one-row) list replaced by ``narrow``'s subset of it; any item ``narrow``
    returns that was not in the list is ignored."""
    assert trace.final is not None
    f = trace.final
    row = f.items[0]
    score = {int(i): float(s) for i, s in zip(row, f.scores[0], strict=True) if i != PAD}
    kept = [int(i) for i in narrow(row) if int(i) in score]
    items = np.full((1, max(len(kept), 1)), PAD, dtype=np.int64)
    scores = np.full(items.shape, -np.inf)
    items[0, : len(kept)] = kept
    scores[0, : len(kept)] = [score[i] for i in kept]
    return CandidateBatch(items, scores, f.stage, f.fallback)
