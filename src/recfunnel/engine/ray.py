"""The Ray engine: a fitted pipeline over batches of requests on a Ray cluster (Ray Data).

The driver fits and tunes the pipeline once (as the local engine does) and ships it to a
pool of actors; stages pickle without their loaded LLMs, which each actor loads from its
own process's pool on first use (``gpus_per_actor`` asks Ray for GPUs), or which call a
server pool (``backend = "openai"``, ``base_url`` behind a load balancer). Each batch's
trace comes back whole; the driver concatenates the batches in request order and sums
their stage figures (they are counts, so the sums are exact). Metrics, per-stage recall
and costs are then computed exactly as for the local engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from typing import Any

import numpy as np

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import require
from recfunnel.core.types import EvalSet
from recfunnel.engine.config import EngineConfig
from recfunnel.pipeline import Pipeline, rows_with_target
from recfunnel.stages.base import StageStats, Trace

PASSED_ENV = ("RECFUNNEL_CACHE", "RECFUNNEL_ANSWERS", "RECFUNNEL_DATA", "RECFUNNEL_QUIET",
              "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")  # fmt: skip


class PipelineActor:
    """One copy of the fitted pipeline in a Ray actor; called with batches of row indices."""

    def __init__(self, pipeline: bytes, test: EvalSet, k: int, only_hits: bool) -> None:
        # the pipeline travels as its own pickle: Ray's zero-copy arrays are read-only,
        # and a fitted model (implicit's factors) writes into its own
        self.pipeline: Pipeline = pickle.loads(pipeline)
        self.test = test
        self.k = k
        self.rows = rows_with_target(test) if only_hits else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        idx = batch["row"].astype(np.int64)
        res = self.pipeline.run([self.test.requests[int(i)] for i in idx], self.k, rows=self.rows)
        res.requests = []  # the driver has them
        blob = np.full(len(idx), b"", dtype=object)
        blob[0] = pickle.dumps((idx, res))
        return {"row": idx, "blob": blob}


def concat(batches: list[CandidateBatch]) -> CandidateBatch:
    """Batches of one stage for consecutive rows, as one (padded to the deepest)."""
    depth = max(b.depth for b in batches)

    def pad(x: np.ndarray, fill: Any) -> np.ndarray:
        if x.shape[1] == depth:
            return x
        out = np.full((x.shape[0], depth), fill, dtype=x.dtype)
        out[:, : x.shape[1]] = x
        return out

    first = batches[0]
    flags = [b.fallback for b in batches if b.fallback is not None]
    fallback = np.concatenate(flags) if len(flags) == len(batches) else None
    fills = {"f": np.nan, "b": False, "O": None}
    extras = {
        key: np.concatenate([pad(b.extras[key], fills.get(v.dtype.kind, -1)) for b in batches])
        for key, v in first.extras.items()
    }
    return CandidateBatch(
        np.concatenate([pad(b.items, PAD) for b in batches]),
        np.concatenate([pad(b.scores, -np.inf) for b in batches]),
        first.stage, fallback, extras,
    )  # fmt: skip


def merge(parts: list[tuple[np.ndarray, Trace]], requests: list[Any], k: int) -> Trace:
    """The batches' traces as the trace of all requests, in request order."""
    parts = sorted(parts, key=lambda p: int(p[0].min()))
    rows = np.concatenate([idx for idx, _ in parts])
    order = np.argsort(rows, kind="stable")
    traces = [t for _, t in parts]
    first = traces[0]

    def joined(pick: Any) -> dict[str, CandidateBatch]:
        return {name: concat([pick(t)[name] for t in traces]).take(order) for name in pick(first)}

    out = Trace(requests, k, first.depth, route=first.route)
    assert first.final is not None
    out.final = concat([t.final for t in traces if t.final is not None]).take(order)
    out.batches, out.inputs, out.notes = (
        joined(lambda t: t.batches),
        joined(lambda t: t.inputs),
        joined(lambda t: t.notes),
    )
    out.modes = dict(first.modes)
    for t in traces:
        for stage, secs in t.timings.items():
            out.timings[stage] = out.timings.get(stage, 0.0) + secs
    for stage in dict.fromkeys(s for t in traces for s in t.stats):
        like = next(t.stats[stage] for t in traces if stage in t.stats)
        # a batch without this stage (a router path none of its rows took) adds no counts
        # but still counts its requests in the per-user denominator
        zero = [dataclasses.replace(type(like)(), users=len(i)) for i, _ in parts]
        merged = StageStats.merged(
            [t.stats.get(stage, z) for t, z in zip(traces, zero, strict=True)]
        )
        row_seconds = getattr(merged, "row_seconds", None)
        if row_seconds is not None and len(row_seconds) == len(order):
            merged.row_seconds = row_seconds[order]  # type: ignore[attr-defined]
        out.stats[stage] = merged
    return out


def rank_on_ray(engine: EngineConfig, pipeline: Pipeline, test: EvalSet, k: int,
                only_hits: bool) -> Trace:  # fmt: skip
    """Rank ``test`` with ``pipeline`` on a pool of actors: the local engine's trace."""
    ray = ensure_ray(engine)
    n = len(test)
    ds = ray.data.from_items([{"row": i} for i in range(n)])
    out = ds.map_batches(
        PipelineActor,
        fn_constructor_kwargs={"pipeline": pickle.dumps(pipeline), "test": test, "k": k,
                               "only_hits": only_hits},
        batch_size=engine.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(engine.actors, -(-n // engine.batch_size))),
        num_cpus=engine.cpus_per_actor,
        num_gpus=engine.gpus_per_actor or None,
    )  # fmt: skip
    parts = []
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        parts += [pickle.loads(b) for b in batch["blob"] if len(b)]
    return merge(parts, list(test.requests), k)


def ensure_ray(engine: EngineConfig) -> Any:
    """Connect to ``engine.address``, or start a local Ray once per process."""
    ray = require("ray", "ray", "the ray engine")
    require("ray.data", "ray", "the ray engine")
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                  "include_dashboard": False,
                                  "logging_level": logging.WARNING}  # fmt: skip
        if engine.address is None:
            kwargs["num_cpus"] = os.cpu_count()
        ray.init(address=engine.address, **kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
    return ray


def shutdown() -> None:
    ray = require("ray", "ray", "the ray engine")
    if ray.is_initialized():
        ray.shutdown()
