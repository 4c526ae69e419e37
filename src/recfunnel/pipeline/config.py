"""Pipelines as configs: an ordered list of stages, a router over two pipelines, and the
built-in pipelines that need no file.

In TOML a pipeline is a name and its stages, in funnel order::

    [[pipelines]]
    name = "hybrid+ltr"
    [[pipelines.stages]]
    kind = "cf"
    [[pipelines.stages]]
    kind = "content"
    [[pipelines.stages]]
    kind = "fuse"
    method = "rrf"
    [[pipelines.stages]]
    kind = "ltr"
    top_n = 100

Retrieval stages come first (each adds a candidate pool); several pools need a ``fuse``
stage after them; then any number of ranking, reranking and LLM feature stages, each
reordering the head of the list so far; an ``explain`` stage may close the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from recfunnel.core.config import Strict
from recfunnel.core.errors import ConfigError
from recfunnel.core.metrics import MetricName
from recfunnel.stages.base import StageConfig
from recfunnel.stages.rank.lists import ListsConfig
from recfunnel.stages.rank.ltr import LTRConfig
from recfunnel.stages.registry import stage_class, stage_config_type
from recfunnel.stages.rerank.aspects import AspectConfig
from recfunnel.stages.rerank.exposure import ExposureConfig
from recfunnel.stages.rerank.goal import GoalConfig
from recfunnel.stages.rerank.llm import RerankConfig
from recfunnel.stages.retrieve.cf import CFConfig
from recfunnel.stages.retrieve.content import ContentConfig
from recfunnel.stages.retrieve.fuse import FusionConfig
from recfunnel.stages.retrieve.popularity import PopularityConfig, RandomConfig
from recfunnel.stages.retrieve.sasrec import SASRecConfig

if TYPE_CHECKING:
    StageSpec = StageConfig
else:
    StageSpec = stage_config_type()
    """One entry of ``stages``: any registered stage's config, picked by ``kind``."""

OLD_KEYS = ("retrievers", "fusion", "rank", "rerank", "explain")


class PipelineConfig(Strict):
    """One funnel: its stages in order (see the module's docstring)."""

    name: str = Field(min_length=1)
    pool_size: int = Field(200, ge=1, description="Depth of each retrieval pool.")
    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _old_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and (old := [k for k in OLD_KEYS if k in data]):
            raise ValueError(
                f"{', '.join(old)}: pipelines are a list of stages since recfunnel 0.2; write "
                "them as [[pipelines.stages]] entries in funnel order (retrievers, fuse, "
                "rank/rerank, explain), each with its `kind`"
            )
        return data

    @model_validator(mode="after")
    def _order(self) -> PipelineConfig:
        modes = [stage_class(s.kind).mode for s in self.stages]
        pools = 0
        while pools < len(modes) and modes[pools] == "pool":
            pools += 1
        if pools == 0:
            raise ValueError("stages.0: a pipeline starts with a retrieval stage")
        rest = modes[pools:]
        if "pool" in rest:
            at = pools + rest.index("pool")
            raise ValueError(f"stages.{at}: retrieval stages come first, before any other")
        if pools > 1 and (not rest or rest[0] != "list"):
            raise ValueError(
                f"stages.{pools}: {pools} retrieval pools need a `fuse` stage right after them"
            )
        if rest.count("list") > 1 or "list" in rest[1:]:
            raise ValueError("a pipeline has at most one `fuse` stage, right after retrieval")
        notes = [i for i, m in enumerate(modes) if m == "note"]
        if notes and any(m != "note" for m in modes[notes[0] :]):
            raise ValueError(f"stages.{notes[0]}: an explanation stage closes the pipeline")
        for i, s in enumerate(self.stages):
            w = getattr(s, "weights", None)
            if isinstance(s, FusionConfig) and w is not None and len(w) != pools:
                raise ValueError(f"stages.{i}.weights has {len(w)} values for {pools} pools")
        names = [s.name for s in self.stages if s.name]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"stage names must be unique; repeated: {dup}")
        return self

    def find(self, kind: str) -> list[Any]:
        """This pipeline's stage configs of one ``kind``."""
        return [s for s in self.stages if s.kind == kind]


class RouteConfig(Strict):
    """Cold requests (history length <= threshold, or free text) to ``cold``, the rest to
    ``warm``; each a pipeline name (of this config or built in) or a full pipeline."""

    cold: str | PipelineConfig
    warm: str | PipelineConfig
    threshold: int | None = Field(None, ge=0, description="None: chosen on validation users")
    thresholds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 5, 10, 20, 50, 100, 200], min_length=1
    )
    metric: MetricName = "ndcg@10"
    query_to_cold: bool = Field(True, description="requests with free text take the cold path")
    users: int | None = Field(200, ge=1, description="validation users for the threshold")


class RoutedPipelineConfig(Strict):
    """Two pipelines behind a history-length rule (see :class:`RouteConfig`)."""

    name: str = Field(min_length=1)
    route: RouteConfig

    def resolve(self, defined: dict[str, PipelineConfig], where: str = "route") -> None:
        """Replace pipeline names in ``route`` by their configs (``defined`` first, then the
        built-ins)."""
        for side in ("cold", "warm"):
            ref = getattr(self.route, side)
            if isinstance(ref, str):
                if ref not in defined and ref not in BUILTIN_PIPELINES:
                    raise ValueError(f"{where}.{side}: no pipeline named {ref!r}")
                setattr(self.route, side, defined.get(ref) or builtin_pipeline(ref))


def _pipeline_shape(value: Any) -> str:
    """Which pipeline a ``[[pipelines]]`` entry is: a router has a ``route``. Told apart
    before validation, so an error in a plain pipeline is not reported a second time as
    the router it never meant to be."""
    if isinstance(value, RoutedPipelineConfig) or (isinstance(value, dict) and "route" in value):
        return "routed"
    return "plain"


AnyPipelineConfig = Annotated[
    Annotated[PipelineConfig, Tag("plain")] | Annotated[RoutedPipelineConfig, Tag("routed")],
    Discriminator(_pipeline_shape),
]
"""One ``[[pipelines]]`` entry: a plain pipeline, or a router (with ``route``)."""


def pipelines_of(config: AnyPipelineConfig) -> list[PipelineConfig]:
    """The plain pipelines a config runs (a router's two paths, resolved)."""
    if isinstance(config, RoutedPipelineConfig):
        sides = [config.route.cold, config.route.warm]
        return [p for p in sides if isinstance(p, PipelineConfig)]
    return [config]


def llm_configs(config: AnyPipelineConfig) -> list[Any]:
    """The LLM configs of a pipeline's LLM stages, in stage order (both paths of a router)."""
    return [getattr(s, "llm") for p in pipelines_of(config) for s in p.stages  # noqa: B009
            if stage_class(s.kind).uses_llm]  # fmt: skip


def learns_on_validation(stage: StageConfig) -> bool:
    """Whether the stage learns from validation users (a ranker, a calibrated blend, a tuned
    exposure weight): such a pipeline needs users held out to tune on."""
    return stage_class(stage.kind)(stage).tunes


# ---- built-in pipelines ----------------------------------------------------------------
def _builtins() -> dict[str, PipelineConfig]:
    def p(name: str, *stages: Any) -> PipelineConfig:
        return PipelineConfig(name=name, stages=list(stages))

    hybrid = [CFConfig(), ContentConfig(), PopularityConfig(), FusionConfig(method="rrf")]
    out = [
        *(p(f"hybrid+llm-{m}", *hybrid, RerankConfig(kind=m))
          for m in ("verbalizer", "permutation", "pointwise")),
        p("hybrid+ltr", *hybrid, LTRConfig()),
        p("hybrid+ltr+llm-verbalizer", *hybrid, LTRConfig(), RerankConfig()),
        *(p(f"mf+{m}", CFConfig(), AspectConfig(kind=m)) for m in ("mmr", "dpp", "fair")),
        p("mf", CFConfig()),
        p("mf+llm-goal", CFConfig(), GoalConfig()),
        p("popularity", PopularityConfig()),
        p("random", RandomConfig()),
        p("cf", CFConfig()),
        p("itemknn", CFConfig(model="itemknn")),
        p("content", ContentConfig()),
        p("sasrec", SASRecConfig()),
        p("hybrid", *hybrid),
        p("hybrid-weighted", *hybrid[:3], FusionConfig(method="weighted")),
        cold_start_ltr(),
        cold_start_ltr(exposure=True),
    ]  # fmt: skip
    return {c.name: c for c in out}


def cold_start_ltr(exposure: bool = False) -> PipelineConfig:
    """``ltr``: the best measured cold-start ranker (configs/cold-start-stacked.toml).

    Four pools (ALS, item-kNN, content, popularity) fused by RRF, then LambdaRank over the
    top 100, trained on cold-start lists simulated from training users (histories of 3–10
    items); validation users pick the grid point and the number of trees. ``ltr+exposure``
    adds the popularity penalty whose weight validation users pick (at most .005 NDCG@10
    given up on them): the row that meets every cold-start target, the served default."""
    pools = [CFConfig(model="als"), CFConfig(model="itemknn"), ContentConfig(),
             PopularityConfig(), FusionConfig(method="rrf")]  # fmt: skip
    ltr = LTRConfig(top_n=100, features=["pools", "item", "history", "liked"], patience=100,
                    lists=ListsConfig(cuts=[3, 4, 5, 6, 7, 10], folds=4),
                    search={"num_leaves": [7, 15], "min_child_samples": [50, 100]})  # fmt: skip
    if exposure:
        return PipelineConfig(name="ltr+exposure", stages=[*pools, ltr, ExposureConfig()],
                              pool_size=200)  # fmt: skip
    return PipelineConfig(name="ltr", stages=[*pools, ltr], pool_size=200)


def _routed() -> dict[str, RoutedPipelineConfig]:
    """Cold users to the LLM path, warm users to CF (threshold chosen on validation)."""
    route = RouteConfig(cold="hybrid+llm-verbalizer", warm="cf")
    return {"routed": RoutedPipelineConfig(name="routed", route=route)}


def builtin_pipeline(name: str) -> PipelineConfig:
    """A named pipeline that needs no config file (``--pipelines popularity,cf``)."""
    table = _builtins()
    if name not in table:
        raise ConfigError(f"unknown pipeline {name!r}; built-in: {', '.join(BUILTIN_PIPELINES)}")
    return table[name]


def builtin_any(name: str) -> AnyPipelineConfig:
    """A built-in pipeline, routed ones included."""
    routed = _routed()
    return routed[name] if name in routed else builtin_pipeline(name)


BUILTIN_PIPELINES = (*_builtins(), *_routed())
