"""recfunnel: put an LLM into a recommendation funnel and find out, with numbers, where it
helps.

The common path needs only these names (``import recfunnel as rf``)::

    data = rf.load_dataset("ml-latest-small")            # fetched on first use
    split = rf.make_split(data, "cold-start", seed=0)
    funnel = rf.Funnel(rf.builtin_pipeline("hybrid"), seed=0).fit(split.train, data.catalog)
    trace = funnel.run(split.test.requests, k=10)        # every stage's output, in order
    print(rf.score(trace.final.items, split.test.truth, ["ndcg@10"], data.catalog.n_items))

Everything else is reachable in the sub-packages (``recfunnel.stages``, ``recfunnel.llm``,
``recfunnel.serve`` …) but not needed for it. Names load on first use, so ``import
recfunnel`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recfunnel.core import __version__

_PUBLIC = {
    "load_dataset": "recfunnel.data.load",
    "make_split": "recfunnel.data.splits",
    "Funnel": "recfunnel.pipeline.funnel",
    "Router": "recfunnel.pipeline.router",
    "build_pipeline": "recfunnel.pipeline.router",
    "PipelineConfig": "recfunnel.pipeline.config",
    "builtin_pipeline": "recfunnel.pipeline.config",
    "ExperimentConfig": "recfunnel.evaluate.config",
    "DiagnoseConfig": "recfunnel.evaluate.config",
    "load_experiment": "recfunnel.evaluate.config",
    "score": "recfunnel.core.metrics",
    "run_experiment": "recfunnel.evaluate.runner",
    "diagnose": "recfunnel.evaluate.diagnose",
    "Trace": "recfunnel.stages.base",
    "Request": "recfunnel.core.types",
    "Dataset": "recfunnel.core.types",
    "Split": "recfunnel.core.types",
    "CandidateBatch": "recfunnel.core.candidates",
}

__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from recfunnel.core.candidates import CandidateBatch
    from recfunnel.core.metrics import score
    from recfunnel.core.types import Dataset, Request, Split
    from recfunnel.data.load import load_dataset
    from recfunnel.data.splits import make_split
    from recfunnel.evaluate.config import DiagnoseConfig, ExperimentConfig, load_experiment
    from recfunnel.evaluate.diagnose import diagnose
    from recfunnel.evaluate.runner import run_experiment
    from recfunnel.pipeline.config import PipelineConfig, builtin_pipeline
    from recfunnel.pipeline.funnel import Funnel
    from recfunnel.pipeline.router import Router, build_pipeline
    from recfunnel.stages.base import Trace


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'recfunnel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
