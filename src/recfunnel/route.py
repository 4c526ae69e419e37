"""Cold/warm routing: short-history requests take one funnel (e.g. the LLM path), the
rest another (e.g. collaborative filtering), with the history-length threshold chosen on
validation users, and per-bucket reports that show where each path wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np

from recfunnel.config import PipelineConfig, RoutedPipelineConfig
from recfunnel.evaluate.metrics import depth_needed, evaluate
from recfunnel.funnel import Funnel, FunnelResult
from recfunnel.types import PAD, CandidateBatch, Catalog, EvalSet, Interactions, Request, Split

BUCKETS = ((0, 5), (6, 20), (21, 50), (51, None))


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}–{hi}"


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Index into :data:`BUCKETS` of each history length."""
    edges = np.array([hi for _, hi in BUCKETS[:-1]])
    return np.searchsorted(edges, np.asarray(lengths), side="left")


class RoutedFunnel:
    """Two funnels behind one rule: ``len(history) <= threshold`` (or free text, when
    ``query_to_cold``) goes to ``cold``, everything else to ``warm``."""

    def __init__(self, config: RoutedPipelineConfig, seed: int = 0,
                 fitted: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.config = config
        r = config.route
        assert isinstance(r.cold, PipelineConfig) and isinstance(r.warm, PipelineConfig)
        self.cold = Funnel(r.cold, seed, fitted)
        self.warm = Funnel(r.warm, seed, fitted)
        self.threshold_: int | None = r.threshold
        self.route_info_: dict[str, Any] | None = None
        self.calibration_: dict[str, Any] | None = None
        self.ranker_info_: dict[str, Any] | None = None
        self.reranker_ = None

    def fit(self, train: Interactions, catalog: Catalog) -> Self:
        self.cold.fit(train, catalog)
        self.warm.fit(train, catalog)
        return self

    def prepare(self, split: Split, users: int | None = None) -> None:
        """Train what the two paths learn on validation users, then pick the threshold."""
        from recfunnel.evaluate.runner import calibration_set, prepare_funnel

        prepare_funnel(self.cold, split)
        prepare_funnel(self.warm, split)
        if self.config.route.threshold is None:
            self.choose_threshold(calibration_set(split.valid, self.config.route.users,
                                                  split.seed))  # fmt: skip

    def is_cold(self, requests: Sequence[Request]) -> np.ndarray:
        if self.threshold_ is None:
            raise RuntimeError("no routing threshold: set route.threshold or call prepare()")
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
        n = self.cold.catalog_.n_items
        a = evaluate(self.cold.run(valid.requests, k).final.items, valid.truth, [metric], n)
        b = evaluate(self.warm.run(valid.requests, k).final.items, valid.truth, [metric], n)
        lengths = np.array([len(r.history) for r in valid.requests])
        scores = {
            t: float(np.where(lengths <= t, a.per_user[metric], b.per_user[metric]).mean())
            for t in self.config.route.thresholds
        }
        self.threshold_ = max(scores, key=lambda t: scores[t])  # first best: fewest LLM calls
        grid = {str(t): v for t, v in scores.items()}
        self.route_info_ = {"threshold": self.threshold_, "metric": metric,
                            "n_users": len(valid), "grid": grid}  # fmt: skip
        return self.route_info_

    def run(
        self,
        requests: Sequence[Request],
        k: int,
        rerank_rows: Callable[[Sequence[Request], CandidateBatch], np.ndarray] | None = None,
    ) -> FunnelResult:
        cold = self.is_cold(requests)
        items = np.full((len(requests), k), PAD, dtype=np.int64)
        scores = np.full((len(requests), k), -np.inf)
        fallback = np.zeros(len(requests), dtype=bool)
        out = FunnelResult(CandidateBatch(items, scores, "final"))
        for name, funnel, rows in (("cold", self.cold, np.flatnonzero(cold)),
                                   ("warm", self.warm, np.flatnonzero(~cold))):  # fmt: skip
            if not len(rows):
                continue
            res = funnel.run([requests[int(i)] for i in rows], k, rerank_rows=rerank_rows)
            d = res.final.depth
            items[rows, :d], scores[rows, :d] = res.final.items, res.final.scores
            if res.final.fallback is not None:
                fallback[rows] = res.final.fallback
            for stage, secs in res.timings.items():
                out.timings[f"{name}/{stage}"] = secs
            for stage, st in res.stats.items():  # per-user figures: share of all requests
                share = len(rows) / len(requests)
                out.stats[f"{name}/{stage}"] = {
                    key: (v * share if key.endswith("_per_user") else v)
                    for key, v in st.items()
                    if key != "row_seconds"
                }
        routed = {"cold": np.repeat(cold[:, None], k, axis=1)}
        out.final = CandidateBatch(items, scores, "final", fallback, extras=routed)
        out.trace["route"] = out.final
        out.stats["route"] = {"cold_share": float(cold.mean()), "threshold": self.threshold_}
        return out


def build_funnel(
    config: PipelineConfig | RoutedPipelineConfig, seed: int, fitted: dict[str, Any]
) -> Funnel | RoutedFunnel:
    if isinstance(config, RoutedPipelineConfig):
        return RoutedFunnel(config, seed, fitted)
    return Funnel(config, seed, fitted)


def by_history(per_user: dict[str, np.ndarray], lengths: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean of each per-user metric within each history-length bucket (plus ``n``)."""
    idx = bucket_of(lengths)
    out: dict[str, dict[str, float]] = {}
    for b, (lo, hi) in enumerate(BUCKETS):
        mask = idx == b
        row: dict[str, float] = {"n": float(mask.sum())}
        for m, v in per_user.items():
            row[m] = float(v[mask].mean()) if mask.any() else float("nan")
        out[bucket_label(lo, hi)] = row
    return out
