"""Cold/warm routing: short-history requests take one funnel (e.g. the LLM path), the rest
another (e.g. collaborative filtering), with the history-length threshold chosen on
validation users.

A :class:`Router` has the same protocol as a :class:`~recfunnel.pipeline.funnel.Funnel`
(``fit``, ``tune``, ``prepare``, ``finish``, ``run``), so evaluation, serving and the
engines never ask which one they hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import NotFittedError
from recfunnel.core.metrics import depth_needed, evaluate
from recfunnel.core.types import Catalog, EvalSet, Interactions, Request, Split
from recfunnel.pipeline.config import AnyPipelineConfig, PipelineConfig, RoutedPipelineConfig
from recfunnel.pipeline.funnel import Funnel, Shared, calibration_set
from recfunnel.pipeline.protocol import Pipeline, RowPicker
from recfunnel.stages.base import LLMStats, Stage, StageStats, Trace


@dataclass
class RouteStats(StageStats):
    """How many requests took the cold path, and the threshold that sent them."""

    CONSTANT: ClassVar[tuple[str, ...]] = ("threshold",)
    cold_rows: int = 0
    threshold: int | None = None

    def figures(self) -> dict[str, float]:
        share = self.cold_rows / self.rows if self.rows else 0.0
        return {"cold_share": share, "threshold": float(self.threshold or 0)}


class Router:
    """Two funnels behind one rule: ``len(history) <= threshold`` (or free text, when
    ``query_to_cold``) goes to ``cold``, everything else to ``warm``."""

    probe_stage = None

    def __init__(self, config: RoutedPipelineConfig, seed: int = 0,
                 shared: Shared | None = None) -> None:  # fmt: skip
        self.config = config
        r = config.route
        assert isinstance(r.cold, PipelineConfig) and isinstance(r.warm, PipelineConfig)
        shared = shared if shared is not None else Shared()
        self.sides = {"cold": Funnel(r.cold, seed, shared), "warm": Funnel(r.warm, seed, shared)}
        self.threshold_: int | None = r.threshold
        self.tuned_: dict[str, Any] = {}

    def named_stages(self) -> list[tuple[str, Stage[Any]]]:
        """Both paths' stages, named as the router's trace names them (``cold/…``)."""
        return [(f"{side}/{name}", stage) for side, funnel in self.sides.items()
                for name, stage in funnel.named_stages()]  # fmt: skip

    def run_before(self, name: str, requests: Sequence[Request], k: int) -> Trace:
        """What stage ``side/name`` is given when ``requests`` all take its path."""
        side, _, inner = name.partition("/")
        if side not in self.sides:
            raise KeyError(f"no stage {name!r} in {self.config.name!r}: name it cold/… or warm/…")
        return self.sides[side].run_before(inner, requests, k)

    def pending(self, prepared: Trace) -> bool:
        """Whether a path of :meth:`prepare`'s trace still has LLM stages to run."""
        return any(self.sides[side].pending(t) for side, _, t in prepared.parts or [])

    @property
    def cold(self) -> Funnel:
        return self.sides["cold"]

    @property
    def warm(self) -> Funnel:
        return self.sides["warm"]

    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        self.catalog_ = catalog
        for funnel in self.sides.values():
            funnel.fit(train, catalog)
        self.fit_seconds_ = sum(f.fit_seconds_ for f in self.sides.values())
        return self

    def tune(self, split: Split) -> dict[str, Any]:
        """What the two paths learn on validation users, then the threshold."""
        self.tuned_ = {f"{side}/{name}": info for side, funnel in self.sides.items()
                       for name, info in funnel.tune(split).items()}  # fmt: skip
        if self.config.route.threshold is None:
            valid = calibration_set(split.valid, self.config.route.users, split.seed)
            self.tuned_["route"] = self.choose_threshold(valid)
        return self.tuned_

    def is_cold(self, requests: Sequence[Request]) -> np.ndarray:
        if self.threshold_ is None:
            raise NotFittedError("no routing threshold: set route.threshold or call tune()")
        lengths = np.array([len(r.history) for r in requests])
        cold = lengths <= self.threshold_
        if self.config.route.query_to_cold:
            cold |= np.array([bool(r.query and r.query.strip()) for r in requests], dtype=bool)
        return cold

    def choose_threshold(self, valid: EvalSet) -> dict[str, Any]:
        """The threshold of ``route.thresholds`` whose routed metric on ``valid`` is best
        (both paths run once; each threshold only re-picks rows)."""
        metric = self.config.route.metric
        k = depth_needed([metric])
        n = self.catalog_.n_items
        a = evaluate(_items(self.cold.run(valid.requests, k)), valid.truth, [metric], n)
        b = evaluate(_items(self.warm.run(valid.requests, k)), valid.truth, [metric], n)
        lengths = np.array([len(r.history) for r in valid.requests])
        scores = {
            t: float(np.where(lengths <= t, a.per_user[metric], b.per_user[metric]).mean())
            for t in self.config.route.thresholds
        }
        best = max(scores.values())
        # of equally good thresholds the smallest: fewest requests take the (LLM) cold path
        self.threshold_ = min(t for t, v in scores.items() if v == best)
        grid = {str(t): v for t, v in scores.items()}
        return {"threshold": self.threshold_, "metric": metric, "n_users": len(valid),
                "grid": grid}  # fmt: skip

    # ---- running -------------------------------------------------------------------
    def prepare(self, requests: Sequence[Request], k: int,
                narrow: Callable[[np.ndarray], np.ndarray] | None = None) -> Trace:  # fmt: skip
        """Each path's stages before its LLM; one request's trace mirrors its path's."""
        cold = self.is_cold(requests)
        parts = []
        for side, rows in (("cold", np.flatnonzero(cold)), ("warm", np.flatnonzero(~cold))):
            if len(rows):
                sub = [requests[int(i)] for i in rows]
                parts.append((side, rows, self.sides[side].prepare(sub, k, narrow)))
        if len(parts) == 1:
            one = parts[0][2]
            out = dataclasses.replace(one, requests=requests)
        else:
            out = Trace(requests, k, k)
        out.route = parts[0][0] if len(parts) == 1 else "mixed"
        out.parts = parts
        return out

    def finish(self, requests: Sequence[Request], prepared: Trace, k: int,
               shuffle: int | None = None, rows: RowPicker | None = None) -> Trace:  # fmt: skip
        """Each path finished on its rows, reassembled in request order: the answer, each
        path's timings and figures under ``cold/`` and ``warm/`` (per-user figures over
        every request), and which rows went cold."""
        assert prepared.parts is not None, "finish() takes the trace of this router's prepare()"
        n = len(requests)
        items = np.full((n, k), PAD, dtype=np.int64)
        scores = np.full((n, k), -np.inf)
        fallback = np.zeros(n, dtype=bool)
        cold = np.zeros(n, dtype=bool)
        out = Trace(requests, k, k, route=prepared.route)
        notes: list[tuple[np.ndarray, CandidateBatch]] = []
        finished: list[tuple[str, np.ndarray, Trace]] = []
        for side, idx, pre in prepared.parts:
            sub = [requests[int(i)] for i in idx]
            res = self.sides[side].finish(sub, pre, k, shuffle, rows)
            finished.append((side, idx, res))
            assert res.final is not None
            d = res.final.depth
            items[idx, :d], scores[idx, :d] = res.final.items, res.final.scores
            if res.final.fallback is not None:
                fallback[idx] = res.final.fallback
            cold[idx] = side == "cold"
            for stage, secs in res.timings.items():
                out.timings[f"{side}/{stage}"] = secs
            for stage, st in res.stats.items():  # per-user figures: over every request
                shared_out = dataclasses.replace(st, users=n)
                if isinstance(shared_out, LLMStats):
                    shared_out.row_seconds = None
                out.stats[f"{side}/{stage}"] = shared_out
            notes += [(idx, b) for b in res.notes.values()]
        extras = {"cold": np.repeat(cold[:, None], k, axis=1)}
        out.final = CandidateBatch(items, scores, "final", fallback, extras=extras)
        out.batches["route"] = out.final
        out.modes["route"] = "list"
        if notes:
            out.notes["explain"] = _scatter_notes(notes, n)
        out.stats["route"] = RouteStats(rows=n, users=n, cold_rows=int(cold.sum()),
                                        threshold=self.threshold_)  # fmt: skip
        out.parts = finished
        return out

    def run(self, requests: Sequence[Request], k: int, shuffle: int | None = None,
            rows: RowPicker | None = None) -> Trace:  # fmt: skip
        return self.finish(requests, self.prepare(requests, k), k, shuffle, rows)


def _items(trace: Trace) -> np.ndarray:
    assert trace.final is not None
    return trace.final.items


def _scatter_notes(parts: list[tuple[np.ndarray, CandidateBatch]], n: int) -> CandidateBatch:
    """The paths' explanation notes as one batch in request order."""
    depth = max(b.depth for _, b in parts)
    items = np.full((n, depth), PAD, dtype=np.int64)
    scores = np.full((n, depth), -np.inf)
    notes = np.full((n, depth), None, dtype=object)
    for idx, b in parts:
        items[idx, : b.depth], scores[idx, : b.depth] = b.items, b.scores
        if "explanation" in b.extras:
            notes[idx, : b.depth] = b.extras["explanation"]
    return CandidateBatch(items, scores, "explain", extras={"explanation": notes})


def build_pipeline(config: AnyPipelineConfig, seed: int = 0,
                   shared: Shared | None = None) -> Pipeline:  # fmt: skip
    """The funnel or router a config describes (not yet fitted)."""
    if isinstance(config, RoutedPipelineConfig):
        return Router(config, seed, shared)
    return Funnel(config, seed, shared)
