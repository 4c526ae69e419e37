"""Every stage kind, registered once: the ``kind`` a TOML file names, the class that
implements it, and the extra that installs what it needs.

Adding a stage is one file (its config and its class) plus one line here. Modules are
imported lazily, by name, so a missing optional package only matters to the stage that
needs it, and the error then names the extra (as rerankers' ``AVAILABLE_RANKERS`` and
``DEPS_MAPPING`` do).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import Field

from recfunnel.core.errors import ConfigError, MissingDependency
from recfunnel.stages.base import Stage, StageConfig


@dataclass(frozen=True)
class Entry:
    kind: str
    target: str
    """``module:Class`` of the stage, under ``recfunnel.stages``."""
    extra: str | None = None
    """The extra whose packages the stage needs beyond the core install (its LLM's
    back-end names its own)."""
    about: str = ""


REGISTRY: dict[str, Entry] = {
    e.kind: e
    for e in [
        # retrieve: candidate pools
        Entry("popularity", "retrieve.popularity:PopularityRetriever", None, "most interacted"),
        Entry("random", "retrieve.popularity:RandomRetriever", None, "random items (the floor)"),
        Entry("cf", "retrieve.cf:CFRetriever", None, "ALS, item-kNN, BM25, EASE or RP3β"),
        Entry("content", "retrieve.content:ContentRetriever", "embed", "text embeddings, faiss"),
        Entry("sasrec", "retrieve.sasrec:SASRecRetriever", "embed", "SASRec (PyTorch)"),
        Entry("fuse", "retrieve.fuse:Fuse", None, "reciprocal-rank or weighted fusion"),
        # rank: learned rankers
        Entry("ltr", "rank.ltr:LTRRanker", "embed", "LightGBM LambdaRank over the trace"),
        # rerank: LLM and classical
        Entry("verbalizer", "rerank.methods:VerbalizerReranker", None, "LlamaRec: label log-probs"),
        Entry("permutation", "rerank.methods:PermutationReranker", None, "RankGPT: a permutation"),
        Entry("pointwise", "rerank.methods:PointwiseReranker", None, "TALLRec: P(yes) per item"),
        Entry("goal", "rerank.goal:GoalReranker", None, "LLM4Rerank's goal-driven graph"),
        Entry("mmr", "rerank.aspects:AspectReranker", None, "maximal marginal relevance"),
        Entry("dpp", "rerank.aspects:AspectReranker", None, "determinantal point process"),
        Entry("fair", "rerank.aspects:AspectReranker", None, "fair exposure of two groups"),
        Entry("exposure", "rerank.exposure:ExposureReranker", None, "popularity penalty, tuned"),
        Entry("llm-features", "rerank.features:LLMFeatures", None, "LLM scores as features"),
        # explain
        Entry("explain", "explain.grounded:Explainer", None, "grounded one-sentence reasons"),
    ]
}


def stage_class(kind: str) -> type[Stage[Any]]:
    """The class registered for ``kind``."""
    entry = REGISTRY.get(kind)
    if entry is None:
        raise ConfigError(f"unknown stage kind {kind!r}; known: {', '.join(REGISTRY)}")
    module, name = entry.target.split(":")
    try:
        mod = importlib.import_module(f"recfunnel.stages.{module}")
    except ImportError as exc:
        if entry.extra is None or (exc.name or "").startswith("recfunnel"):
            raise
        raise MissingDependency(
            f"stage {kind!r} needs {exc.name!r}: pip install 'recfunnel[{entry.extra}]'"
        ) from exc
    cls: type[Stage[Any]] = getattr(mod, name)
    return cls


def missing_extra(kind: str, exc: ImportError) -> MissingDependency:
    """The error for a stage whose optional package failed to import while it worked."""
    extra = REGISTRY[kind].extra
    hint = f": pip install 'recfunnel[{extra}]'" if extra else ""
    return MissingDependency(f"stage {kind!r} needs {exc.name or exc}{hint}")


def build_stage(config: StageConfig) -> Stage[Any]:
    """A stage for a validated config."""
    return stage_class(config.kind)(config)


@cache
def config_classes() -> tuple[type[StageConfig], ...]:
    """Every registered stage's config class, once each, in registry order."""
    seen: dict[type[StageConfig], None] = {}
    for kind in REGISTRY:
        seen[stage_class(kind).config_class] = None
    return tuple(seen)


def stage_config_type(mode: str | None = None) -> Any:
    """The pydantic type of one ``[[pipelines.stages]]`` entry: a union of every registered
    config (of stages in ``mode`` only, e.g. "pool" for retrievers), told apart by
    ``kind``."""
    from typing import Union

    classes = tuple(
        c for c in config_classes()
        if mode is None or any(stage_class(k).config_class is c and stage_class(k).mode == mode
                               for k in REGISTRY)
    )  # fmt: skip
    union = Union[classes]  # type: ignore[valid-type]  # noqa: UP007
    return Annotated[union, Field(discriminator="kind")]
