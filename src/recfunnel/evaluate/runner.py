"""Run an experiment: for each seed, split, fit every pipeline, rank, and score each stage.

The same :class:`~recfunnel.funnel.Funnel` objects that serve requests are evaluated here;
per-stage pool recall is read from each funnel's trace, never recomputed elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recfunnel.config import ExperimentConfig, TabularDatasetConfig
from recfunnel.data.registry import load_dataset
from recfunnel.data.splits import make_split
from recfunnel.evaluate.metrics import depth_needed, evaluate
from recfunnel.funnel import Funnel, FunnelResult
from recfunnel.types import Dataset, Split

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
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    funnel_result: FunnelResult | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_user")
        d.pop("funnel_result")
        return d


@dataclass
class ExperimentResult:
    dataset: str
    protocol: str
    protocol_params: dict[str, Any]
    seeds: list[int]
    results: list[RunResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "protocol_params": self.protocol_params,
            "seeds": self.seeds,
            "results": [r.to_json() for r in self.results],
        }

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


def load_experiment_data(cfg: ExperimentConfig) -> Dataset:
    if isinstance(cfg.dataset, TabularDatasetConfig):
        from recfunnel.data.tabular import load_tabular

        t = cfg.dataset
        return load_tabular(
            t.interactions,
            t.items,
            name=t.name,
            user_col=t.user_col,
            item_col=t.item_col,
            rating_col=t.rating_col,
            timestamp_col=t.timestamp_col,
            title_col=t.title_col,
            genres_col=t.genres_col,
        )
    return load_dataset(cfg.dataset, cfg.data_dir)


COST_KEYS = (
    "llm_calls_per_user",
    "prompt_tokens_per_user",
    "completion_tokens_per_user",
    "invalid_rate",
)


def stage_metrics(result: FunnelResult, split: Split, n_items: int) -> dict[str, dict[str, float]]:
    """Recall of every stage's own pool at the cutoffs its depth allows, fallbacks, and the
    stage's own figures (LLM calls, tokens, invalid outputs)."""
    out: dict[str, dict[str, float]] = {}
    for name, batch in result.trace.items():
        names = [f"recall@{c}" for c in STAGE_CUTOFFS if c <= batch.depth]
        vals = evaluate(batch.items, split.test.truth, names, n_items).means if names else {}
        out[name] = {**vals, "fallback_rate": batch.fallback_rate, "depth": float(batch.depth)}
        stats = result.stats.get(name, {})
        out[name].update({k: float(v) for k, v in stats.items() if np.ndim(v) == 0})
    return out


def cost_metrics(result: FunnelResult, n_users: int, seconds: float) -> dict[str, float]:
    """Latency and LLM cost per user, summed over the pipeline's LLM stages."""
    out = {"latency_ms_per_user": 1000 * seconds / max(n_users, 1)}
    for key in COST_KEYS:
        out[key] = float(sum(s.get(key, 0.0) for s in result.stats.values()))
    return out


def run_experiment(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    keep_traces: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Evaluate every pipeline on every seed; ``on_step`` is called after each (progress)."""
    data = dataset if dataset is not None else load_experiment_data(cfg)
    depth = depth_needed(cfg.metrics)
    protocol = cfg.protocol.model_dump()
    protocol_name = protocol.pop("name")
    results: list[RunResult] = []
    for seed in cfg.seeds:
        split = make_split(data, protocol_name, seed, **protocol)
        fitted: dict[str, Any] = {}
        counts = split.train.item_counts()
        for pipe in cfg.pipelines:
            t0 = time.perf_counter()
            funnel = Funnel(pipe, seed, fitted).fit(split.train, data.catalog)
            t1 = time.perf_counter()
            out = funnel.run(split.test.requests, depth)
            t2 = time.perf_counter()
            scored = evaluate(
                out.final.items,
                split.test.truth,
                cfg.metrics,
                data.catalog.n_items,
                item_counts=counts,
                n_train_users=split.train.n_users,
            )
            n = len(split.test)
            results.append(
                RunResult(
                    pipeline=pipe.name,
                    seed=seed,
                    metrics={**scored.means, **cost_metrics(out, len(split.test), t2 - t1)},
                    stages=stage_metrics(out, split, data.catalog.n_items),
                    n_users=n,
                    timings={
                        "fit_s": t1 - t0,
                        "run_s": t2 - t1,
                        "latency_ms_per_user": 1000 * (t2 - t1) / max(n, 1),
                    },
                    per_user=scored.per_user,
                    funnel_result=out if keep_traces else None,
                )
            )
            log.info("%s seed %d: %s", pipe.name, seed, scored.means)
            if on_step:
                on_step(f"{pipe.name} (seed {seed})")
    return ExperimentResult(data.name, protocol_name, protocol, list(cfg.seeds), results)
