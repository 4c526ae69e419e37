"""The Ray engine: the same funnels over batches of requests on a Ray cluster (Ray Data).

Each actor of a pool fits the pipeline once (same config, same seed, same training data:
the same model as the local engine's, since every stage is deterministic under its seed)
and learns what it learns from validation users, then ranks the batches it is handed.
The driver reassembles one :class:`~recfunnel.funnel.FunnelResult` — every stage's rows
in request order, the per-stage figures weighted by batch size — so metrics, per-stage
recall and costs are computed exactly as for the local engine. An LLM stage either loads
its model in each actor (``gpus_per_actor`` asks Ray for GPUs) or calls a server pool
(``backend = "openai"``, ``base_url`` behind a load balancer).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np

from recfunnel.engine import EngineConfig
from recfunnel.errors import require
from recfunnel.funnel import FunnelResult
from recfunnel.types import CandidateBatch, Catalog, Split

SEP = "|"
COUNTS = ("_calls", "_tokens", "explained")
"""Endings of stage figures that are totals (summed over batches), not per-user rates
("llm_calls" is a total, "llm_calls_per_user" a rate)."""
PASSED_ENV = ("RECFUNNEL_CACHE", "RECFUNNEL_DATA", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")


class FunnelActor:
    """One fitted funnel in a Ray actor; called with batches of request rows."""

    def __init__(self, pipeline: dict[str, Any], seed: int, split: Split, catalog: Catalog,
                 k: int, only_hits: bool) -> None:  # fmt: skip
        from recfunnel.config import ExperimentConfig
        from recfunnel.evaluate.runner import prepare_funnel, target_in
        from recfunnel.route import build_funnel

        t0 = time.perf_counter()
        pipe = ExperimentConfig.model_validate({"pipelines": [pipeline]}).pipelines[0]
        self.funnel = build_funnel(pipe, seed, {}).fit(split.train, catalog)
        prepare_funnel(self.funnel, split)
        self.info = {
            "fit_s": time.perf_counter() - t0,
            "calibration": self.funnel.calibration_,
            "ranker": self.funnel.ranker_info_,
            "route": getattr(self.funnel, "route_info_", None),
        }
        self.requests = split.test.requests
        self.k = k
        self.rows = target_in(split.test) if only_hits else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        idx = batch["row"].astype(np.int64)
        res = self.funnel.run([self.requests[int(i)] for i in idx], self.k, rerank_rows=self.rows)
        return pack(res, idx, self.info)


def pack(res: FunnelResult, idx: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result as Ray Data columns (one row per request); batch-level figures go in a
    JSON column repeated on each row."""
    cols: dict[str, Any] = {"row": idx}
    for name, b in {"final": res.final, **res.trace}.items():
        cols[f"{name}{SEP}items"] = b.items
        cols[f"{name}{SEP}scores"] = b.scores
        if b.fallback is not None:
            cols[f"{name}{SEP}fallback"] = b.fallback
        for key, v in b.extras.items():
            cols[f"{name}{SEP}extra{SEP}{key}"] = v
    per_row = {s: {k: np.asarray(v) for k, v in st.items() if np.ndim(v) == 1}
               for s, st in res.stats.items()}  # fmt: skip
    for stage, arrays in per_row.items():
        for key, v in arrays.items():
            cols[f"{stage}{SEP}stat{SEP}{key}"] = v
    scalars = {s: {k: float(v) for k, v in st.items() if np.ndim(v) == 0}
               for s, st in res.stats.items()}  # fmt: skip
    meta = json.dumps({"batch": uuid.uuid4().hex, "n": len(idx), "stats": scalars,
                       "timings": res.timings, "info": info or {}}, default=float)  # fmt: skip
    cols["meta"] = np.array([meta] * len(idx), dtype=object)
    return cols


def unpack(cols: dict[str, np.ndarray]) -> tuple[FunnelResult, dict[str, Any]]:
    """The driver's side of :func:`pack`: rows back in request order, stage figures as the
    batch-size-weighted mean (counts summed), timings summed; plus the actors' fit info."""
    order = np.argsort(cols["row"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    batches: dict[str, dict[str, Any]] = {}
    for key, v in cols.items():
        if SEP not in key:
            continue
        name, field, *rest = key.split(SEP)
        entry = batches.setdefault(name, {"extras": {}, "stats": {}})
        if field == "extra":
            entry["extras"][rest[0]] = v
        elif field == "stat":
            entry["stats"][rest[0]] = v
        else:
            entry[field] = v
    metas = {m["batch"]: m for m in (json.loads(s) for s in cols["meta"])}
    total = sum(m["n"] for m in metas.values())
    stats: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for m in metas.values():
        for stage, st in m["stats"].items():
            into = stats.setdefault(stage, {})
            for key, v in st.items():
                counted = key.endswith(COUNTS)
                into[key] = into.get(key, 0.0) + (v if counted else v * m["n"] / total)
        for stage, secs in m["timings"].items():
            timings[stage] = timings.get(stage, 0.0) + secs
    trace: dict[str, CandidateBatch] = {}
    final = None
    for name, e in batches.items():
        if "items" not in e:  # per-row stats of a stage (e.g. row_seconds)
            stats.setdefault(name, {}).update(e["stats"])
            continue
        b = CandidateBatch(e["items"], e["scores"], name, e.get("fallback"), e["extras"])
        if e["stats"]:
            stats.setdefault(name, {}).update(e["stats"])
        if name == "final":
            final = b
        else:
            trace[name] = b
    assert final is not None
    final = CandidateBatch(final.items, final.scores, "final", final.fallback, final.extras)
    info = next(iter(metas.values()))["info"] if metas else {}
    info["fit_s"] = max((m["info"].get("fit_s", 0.0) for m in metas.values()), default=0.0)
    return FunnelResult(final, trace, timings, {s: v for s, v in stats.items() if v}), info


def run_on_ray(
    engine: EngineConfig,
    pipeline: Any,
    seed: int,
    split: Split,
    catalog: Catalog,
    k: int,
    only_hits: bool,
) -> tuple[FunnelResult, dict[str, Any]]:
    """Rank ``split.test`` with ``pipeline`` on a pool of actors: the local engine's result,
    and what the actors learned (fit seconds, calibration, ranker, route)."""
    ray = ensure_ray(engine)
    n = len(split.test)
    ds = ray.data.from_items([{"row": i} for i in range(n)])
    out = ds.map_batches(
        FunnelActor,
        fn_constructor_kwargs={"pipeline": pipeline.model_dump(), "seed": seed, "split": split,
                               "catalog": catalog, "k": k, "only_hits": only_hits},
        batch_size=engine.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(engine.actors, -(-n // engine.batch_size))),
        num_cpus=engine.cpus_per_actor,
        num_gpus=engine.gpus_per_actor or None,
    )  # fmt: skip
    parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return unpack(cols)


def ensure_ray(engine: EngineConfig) -> Any:
    """Connect to ``engine.address``, or start a local Ray once per process."""
    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not ray.is_initialized():  # type: ignore[attr-defined]
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                  "include_dashboard": False,
                                  "logging_level": logging.WARNING}  # fmt: skip
        if engine.address is None:
            kwargs["num_cpus"] = os.cpu_count()
        ray.init(address=engine.address, **kwargs)  # type: ignore[attr-defined]
        ctx = ray.data.DataContext.get_current()  # type: ignore[attr-defined]
        ctx.enable_progress_bars = False
    return ray


def shutdown() -> None:
    ray = require("ray", "ray")
    if ray.is_initialized():  # type: ignore[attr-defined]
        ray.shutdown()  # type: ignore[attr-defined]
