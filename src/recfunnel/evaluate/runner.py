"""Run an experiment: for each seed, split, fit every pipeline, rank, and score each stage.

The same :class:`~recfunnel.funnel.Funnel` objects that serve requests are evaluated here;
per-stage pool recall is read from each funnel's trace, never recomputed elsewhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recfunnel.config import ExperimentConfig, TabularDatasetConfig
from recfunnel.data.registry import load_dataset
from recfunnel.errors import ConfigError
from recfunnel.evaluate.metrics import depth_needed, evaluate
from recfunnel.funnel import FunnelResult
from recfunnel.rerank.aspects import year_groups
from recfunnel.route import RoutedFunnel, build_funnel, by_history
from recfunnel.train.leakage import check_no_leak
from recfunnel.types import Dataset, EvalSet, Split

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
    calibration: dict[str, Any] | None = None
    ranker: dict[str, Any] | None = None
    """The learned ranker's training users and feature importances (gain shares)."""
    route: dict[str, Any] | None = None
    """A routed pipeline's threshold and the validation scores behind it."""
    history_len: np.ndarray | None = field(default=None, repr=False)
    probes: dict[str, Any] = field(default_factory=dict)
    """What ``run_experiment``'s ``probe`` returned for this run (diagnostics)."""
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    funnel_result: FunnelResult | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("per_user", "funnel_result", "probes", "history_len"):
            d.pop(key)
        return d


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


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
            table[name] = by_history(per_user, lengths)
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
    explain = result.stats.get("explain")
    if explain is not None:  # explanations cost LLM calls too, and have their own rates
        n = max(n_users, 1)
        out["llm_calls_per_user"] += explain["llm_calls"] / n
        out["prompt_tokens_per_user"] += explain["prompt_tokens"] / n
        out["completion_tokens_per_user"] += explain["completion_tokens"] / n
        out.update({f"explain_{k}": float(v) for k, v in explain.items() if k.endswith("rate")})
    return out


Probe = Callable[[Any, Split, FunnelResult], dict[str, Any]]


def prepare_funnel(funnel: Any, split: Split) -> None:
    """What a funnel learns from validation users before it meets a test user: the
    learned ranker, the reranker's calibration, a router's threshold."""
    if isinstance(funnel, RoutedFunnel):
        funnel.prepare(split)
        return
    cfg = funnel.config
    if cfg.rank is not None:
        funnel.fit_ranker(
            calibration_set(split.valid, cfg.rank.train_users, split.seed), split.test
        )
    if getattr(cfg.rerank, "calibration", None) is not None:
        cal = cfg.rerank.calibration
        funnel.calibrate(calibration_set(split.valid, cal.users, split.seed))


def calibration_set(valid: EvalSet | None, users: int | None, seed: int) -> EvalSet:
    """The validation users a calibration or a ranker may learn from (a seeded sample)."""
    if valid is None or len(valid) == 0:
        raise ConfigError(
            "rank and rerank.calibration need validation users: "
            "set protocol.n_valid > 0 (cold-start)"
        )
    if users is None or users >= len(valid):
        return valid
    pick = np.sort(np.random.default_rng(seed).choice(len(valid), users, replace=False))
    return EvalSet([valid.requests[i] for i in pick], [valid.truth[i] for i in pick])


def target_in(evalset: EvalSet) -> Callable[[Any, Any], np.ndarray]:
    """Rows whose reranker input holds a relevant item (``rerank_users``); requests are
    matched by identity, so a router's subsets work too."""
    truth = {id(r): t for r, t in zip(evalset.requests, evalset.truth, strict=True)}

    def rows(requests: Any, head: Any) -> np.ndarray:
        return np.array(
            [np.isin(truth[id(r)], head.items[i]).any() for i, r in enumerate(requests)],
            dtype=bool,
        )

    return rows


def run_experiment(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    keep_traces: bool = False,
    on_step: Callable[[str], None] | None = None,
    probe: Probe | None = None,
) -> ExperimentResult:
    """Evaluate every pipeline on every seed; ``on_step`` is called after each (progress).

    A pipeline whose reranker has a ``calibration`` is calibrated on validation users
    before it sees a test user. ``probe`` runs after each pipeline's test pass (e.g. the
    shuffled-input rerun of ``recfunnel diagnose``); what it returns lands in ``probes``.
    """
    data = dataset if dataset is not None else load_experiment_data(cfg)
    check_no_leak(cfg, data.name)
    depth = depth_needed(cfg.metrics)
    protocol = cfg.protocol.model_dump()
    protocol_name = protocol.pop("name")
    results: list[RunResult] = []
    genres, groups = data.catalog.genre_matrix, year_groups(data.catalog)
    for seed in cfg.seeds:
        split = cfg.protocol.split(data, seed)
        fitted: dict[str, Any] = {}
        counts = split.train.item_counts()
        for pipe in cfg.pipelines:
            only_hits = cfg.rerank_users == "target-in-input"
            t0 = time.perf_counter()
            funnel: Any = None
            if cfg.engine.kind == "local" or probe is not None:  # a probe reruns it here
                funnel = build_funnel(pipe, seed, fitted).fit(split.train, data.catalog)
                prepare_funnel(funnel, split)
            t1 = time.perf_counter()
            if cfg.engine.kind == "ray":
                from recfunnel.engine.ray import run_on_ray

                out, info = run_on_ray(cfg.engine, pipe, seed, split, data.catalog, depth,
                                       only_hits)  # fmt: skip
            else:
                out = funnel.run(
                    split.test.requests,
                    depth,
                    rerank_rows=target_in(split.test) if only_hits else None,
                )
                info = {"fit_s": t1 - t0, "calibration": funnel.calibration_,
                        "ranker": funnel.ranker_info_,
                        "route": getattr(funnel, "route_info_", None)}  # fmt: skip
            t2 = time.perf_counter()
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
            results.append(
                RunResult(
                    pipeline=pipe.name,
                    seed=seed,
                    metrics={**scored.means, **cost_metrics(out, len(split.test), t2 - t1)},
                    stages=stage_metrics(out, split, data.catalog.n_items),
                    n_users=n,
                    timings={
                        "fit_s": info["fit_s"],
                        "run_s": t2 - t1,
                        "latency_ms_per_user": 1000 * (t2 - t1) / max(n, 1),
                    },
                    calibration=info["calibration"],
                    ranker=info["ranker"],
                    route=info["route"],
                    history_len=np.array([len(r.history) for r in split.test.requests]),
                    probes=probe(funnel, split, out) if probe else {},
                    per_user=scored.per_user,
                    funnel_result=out if keep_traces else None,
                )
            )
            log.info("%s seed %d: %s", pipe.name, seed, scored.means)
            if on_step:
                on_step(f"{pipe.name} (seed {seed})")
    return ExperimentResult(data.name, protocol_name, protocol, list(cfg.seeds), results)
