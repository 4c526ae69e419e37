"""Engines that rank an experiment's test users with a fitted pipeline: ``local`` (this
process) or ``ray`` (:mod:`recfunnel.engine.ray`, imported only when asked for). Both
return the same :class:`~recfunnel.stages.base.Trace`."""

from __future__ import annotations

from recfunnel.core.types import EvalSet
from recfunnel.engine.config import EngineConfig
from recfunnel.pipeline import Pipeline, rows_with_target
from recfunnel.stages.base import Trace

__all__ = ["EngineConfig", "rank"]


def rank(engine: EngineConfig, pipeline: Pipeline, test: EvalSet, k: int,
         only_hits: bool = False) -> Trace:  # fmt: skip
    """``pipeline`` (fitted and tuned) over ``test``'s requests, to depth ``k``.

    ``only_hits``: the probed stage runs only for requests with a relevant item in its
    input (``rerank_users = "target-in-input"``)."""
    if engine.kind == "ray":
        from recfunnel.engine.ray import rank_on_ray

        return rank_on_ray(engine, pipeline, test, k, only_hits)
    rows = rows_with_target(test) if only_hits else None
    return pipeline.run(test.requests, k, rows=rows)
