"""Run an experiment: for each seed, split, fit and tune every pipeline, rank the test users
with the chosen engine, and score each stage.

The same pipeline objects that serve requests are evaluated here; per-stage pool recall is
read from each run's trace, never recomputed elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recfunnel.core.errors import ConfigError
from recfunnel.core.groups import DEFAULT_SPLIT_YEAR, year_groups
from recfunnel.core.metrics import depth_needed, evaluate
from recfunnel.core.strict_json import json_safe
from recfunnel.core.types import Dataset, Split
from recfunnel.engine import rank
from recfunnel.evaluate.buckets import buckets_for, by_history, new_item_figures
from recfunnel.evaluate.config import ExperimentConfig
from recfunnel.pipeline import Pipeline, Shared, build_pipeline
from recfunnel.pipeline.config import pipelines_of
from recfunnel.pipeline.leakage import check_no_leak
from recfunnel.stages.base import Trace

log = logging.getLogger(__name__)

STAGE_CUTOFFS = (10, 50, 200, 1000)


@dataclass
class RunResult:
    """One pipeline on one seed."""

    pipeline: str
    seed: int
    metrics: dict[str, float]
    stages: dict[str, dict[str, float]]
    n_users: int
    timings: dict[str, float]
    tuned: dict[str, Any] = field(default_factory=dict)
    """What each stage learned on validation users (a ranker's training users and feature
    importances, a blend weight, a router's threshold), by stage name."""
    history_len: np.ndarray | None = field(default=None, repr=False)
    probes: dict[str, Any] = field(default_factory=dict)
    """What ``run_experiment``'s ``probe`` returned for this run (diagnostics)."""
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    trace: Trace | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("per_user", "trace", "probes", "history_len"):
            d.pop(key)
        return d


@dataclass
class ExperimentResult:
    dataset: str
    protocol: str
    protocol_params: dict[str, Any]
    seeds: list[int]
    results: list[RunResult]

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: an undefined figure (an empty bucket, a NaN metric) is null."""
        return json_safe({
            "dataset": self.dataset,
            "protocol": self.protocol,
            "protocol_params": self.protocol_params,
            "seeds": self.seeds,
            "results": [r.to_json() for r in self.results],
            "by_history": self.by_history(),
        })  # fmt: skip

    def by_history(self) -> dict[str, Any]:
        """Per pipeline and history-length bucket: each per-user metric's mean over all
        (seed, user) rows, the row count, and each bucket's winner per metric."""
        table: dict[str, dict[str, dict[str, float]]] = {}
        for name in dict.fromkeys(r.pipeline for r in self.results):
            runs = [r for r in self.results if r.pipeline == name and r.history_len is not None]
            if not runs:
                continue
            per_user = {m: np.concatenate([r.per_user[m] for r in runs]) for m in runs[0].per_user}
            lengths = np.concatenate([np.asarray(r.history_len) for r in runs])
            table[name] = by_history(per_user, lengths, buckets_for(self.protocol))
        winners: dict[str, dict[str, str]] = {}
        if table:
            first = next(iter(table.values()))
            metrics = [m for m in next(iter(first.values())) if m != "n"]
            for m in metrics:
                winners[m] = {}
                for bucket, row in first.items():
                    if row["n"] == 0:
                        continue
                    winners[m][bucket] = max(table, key=lambda p: table[p][bucket][m])
        return {"buckets": table, "winner": winners}

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """pipeline -> metric -> (mean, std over seeds), in pipeline order."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for name in dict.fromkeys(r.pipeline for r in self.results):
            runs = [r for r in self.results if r.pipeline == name]
            out[name] = {
                m: (float(np.mean(v)), float(np.std(v)))
                for m in runs[0].metrics
                for v in [[r.metrics[m] for r in runs]]
            }
        return out


COST_KEYS = (
    "llm_calls_per_user",
    "prompt_tokens_per_user",
    "completion_tokens_per_user",
)
"""Per-user costs: summed over the pipeline's stages. The invalid rate is not a sum: it
is every stage's invalid outputs over every stage's outputs."""


def stage_metrics(trace: Trace, split: Split, n_items: int) -> dict[str, dict[str, float]]:
    """Recall of every stage's own pool at the cutoffs its depth allows, fallbacks, and the
    stage's own figures (LLM calls, tokens, invalid outputs)."""
    out: dict[str, dict[str, float]] = {}
    for name, batch in trace.batches.items():
        names = [f"recall@{c}" for c in STAGE_CUTOFFS if c <= batch.depth]
        vals = evaluate(batch.items, split.test.truth, names, n_items).means if names else {}
        out[name] = {**vals, "fallback_rate": batch.fallback_rate, "depth": float(batch.depth)}
        if name in trace.stats:
            out[name].update(trace.stats[name].figures())
    return out


def cost_metrics(trace: Trace, n_users: int, seconds: float) -> dict[str, float]:
    """Latency and LLM cost per user, summed over the pipeline's LLM stages (explanations
    included, with their grounding rates)."""
    out = {"latency_ms_per_user": 1000 * seconds / max(n_users, 1)}
    figures = {name: st.figures() for name, st in trace.stats.items()}
    for key in COST_KEYS:
        out[key] = float(sum(f.get(key, 0.0) for f in figures.values()))
    outputs = sum(int(getattr(st, "outputs", 0)) for st in trace.stats.values())
    invalid = sum(int(getattr(st, "invalid_outputs", 0)) for st in trace.stats.values())
    out["invalid_rate"] = invalid / outputs if outputs else 0.0
    for name in trace.notes:
        for key, v in figures.get(name, {}).items():
            if key.endswith("rate") and key != "invalid_rate":
                out[f"explain_{key}"] = float(v)
    return out


def new_items_of(split: Split, items: np.ndarray, metrics: list[str],
                 n_items: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:  # fmt: skip
    """A temporal split's new-item figures (share of the truth, new_recall@k at each
    recall@k of ``metrics`` the ranking is deep enough for); nothing for other protocols."""
    if split.new_items is None:
        return {}, {}
    ks = sorted({int(m.split("@")[1]) for m in metrics if m.startswith("recall@")})
    ks = [k for k in ks if k <= items.shape[1]] or [min(10, items.shape[1])]
    return new_item_figures(items, split.test.truth, split.new_items, n_items, ks)


Probe = Callable[[Pipeline, Split, Trace], dict[str, Any]]


def warn_whole_catalog(cfg: ExperimentConfig, n_items: int) -> list[str]:
    """A warning per pipeline whose pool size is at or above the catalog size: every pool
    then holds the whole catalog and its recall is 1 by construction."""
    out = []
    for pipe in cfg.pipelines:
        for p in pipelines_of(pipe):
            if p.pool_size >= n_items:
                out.append(f"pipeline {pipe.name!r}: pool_size {p.pool_size} is at or above "
                           f"the catalog's {n_items} items, so every pool holds the whole "
                           f"catalog and its recall@K is 1 by construction")  # fmt: skip
    for line in dict.fromkeys(out):
        log.warning("%s", line)
    return out


def mad_split_year(cfg: ExperimentConfig) -> int:
    """The release year that splits the groups of ``mad``: the one the experiment's
    fairness stages were configured with (``split_year`` of ``fair`` and of the goal
    stage), else the default. Pipelines that disagree cannot share one ``mad``: refused."""
    years = {int(s.split_year) for pipe in cfg.pipelines for p in pipelines_of(pipe)
             for kind in ("fair", "goal") for s in p.find(kind)}  # fmt: skip
    if len(years) > 1 and any(m.startswith("mad") for m in cfg.metrics):
        raise ConfigError(
            f"mad: the pipelines' fairness stages split the groups at different years "
            f"({', '.join(map(str, sorted(years)))}); give every fair stage one split_year"
        )
    return years.pop() if len(years) == 1 else DEFAULT_SPLIT_YEAR


def run_experiment(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    keep_traces: bool = False,
    on_step: Callable[[str], None] | None = None,
    probe: Probe | None = None,
) -> ExperimentResult:
    """Evaluate every pipeline on every seed; ``on_step`` is called after each (progress).

    Each pipeline is fitted on the training split and tuned on validation users (a learned
    ranker, a calibrated blend, a router's threshold) before it sees a test user. ``probe``
    runs after each pipeline's test pass (e.g. the shuffled-input rerun of ``recfunnel
    diagnose``); what it returns lands in ``probes``.
    """
    data = dataset if dataset is not None else cfg.load_data()
    check_no_leak(cfg, data.name, cfg.allow_unchecked_adapters)
    depth = depth_needed(cfg.metrics)
    protocol = cfg.protocol.model_dump()
    protocol_name = protocol.pop("name")
    results: list[RunResult] = []
    genres, groups = data.catalog.genre_matrix, year_groups(data.catalog, mad_split_year(cfg))
    only_hits = cfg.rerank_users == "target-in-input"
    warn_whole_catalog(cfg, data.catalog.n_items)
    for seed in cfg.seeds:
        split = cfg.protocol.split(data, seed)
        shared = Shared()
        counts = split.train.item_counts()
        for pipe in cfg.pipelines:
            t0 = time.perf_counter()
            pipeline = build_pipeline(pipe, seed, shared).fit(split.train, data.catalog)
            tuned = pipeline.tune(split)
            t1 = time.perf_counter()
            out = rank(cfg.engine, pipeline, split.test, depth, only_hits)
            t2 = time.perf_counter()
            assert out.final is not None
            scored = evaluate(
                out.final.items,
                split.test.truth,
                cfg.metrics,
                data.catalog.n_items,
                item_counts=counts,
                n_train_users=split.train.n_users,
                item_genres=genres,
                item_groups=groups,
            )
            n = len(split.test)
            cost = cost_metrics(out, n, t2 - t1)
            fresh, fresh_per_user = new_items_of(split, out.final.items, cfg.metrics,
                                                 data.catalog.n_items)  # fmt: skip
            results.append(
                RunResult(
                    pipeline=pipe.name,
                    seed=seed,
                    metrics={**scored.means, **fresh, **cost},
                    stages=stage_metrics(out, split, data.catalog.n_items),
                    n_users=n,
                    timings={
                        "fit_s": t1 - t0,
                        "run_s": t2 - t1,
                        "latency_ms_per_user": cost["latency_ms_per_user"],
                    },
                    tuned=tuned,
                    history_len=np.array([len(r.history) for r in split.test.requests]),
                    probes=probe(pipeline, split, out) if probe else {},
                    per_user={**scored.per_user, **fresh_per_user},
                    trace=out if keep_traces else None,
                )
            )
            log.info("%s seed %d: %s", pipe.name, seed, scored.means)
            if on_step:
                on_step(f"{pipe.name} (seed {seed})")
    return ExperimentResult(data.name, protocol_name, protocol, list(cfg.seeds), results)
