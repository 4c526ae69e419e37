"""Experiment and pipeline configuration (TOML files validated by pydantic).

A bad field is reported by its dotted path, e.g. ``pipelines.1.retrievers.0.factors``, so
a user can find it in the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recfunnel.data.splits import make_split
from recfunnel.engine import EngineConfig
from recfunnel.errors import ConfigError
from recfunnel.evaluate.metrics import parse_metric
from recfunnel.explain import ExplainConfig
from recfunnel.rank.ltr import LTRConfig
from recfunnel.rerank.aspects import AspectConfig
from recfunnel.rerank.goal import GoalConfig
from recfunnel.rerank.llm import RerankConfig
from recfunnel.retrieve.cf import CFConfig
from recfunnel.retrieve.content import ContentConfig
from recfunnel.retrieve.fusion import FusionConfig
from recfunnel.retrieve.popularity import PopularityConfig, RandomConfig
from recfunnel.retrieve.sasrec import SASRecConfig
from recfunnel.types import Dataset, Split

RetrieverConfig = Annotated[
    PopularityConfig | RandomConfig | CFConfig | ContentConfig | SASRecConfig,
    Field(discriminator="kind"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineConfig(_Strict):
    """Stages of one funnel: retrievers (fused when several) and, later, ranker and reranker."""

    name: str = Field(min_length=1)
    retrievers: list[RetrieverConfig] = Field(min_length=1)
    fusion: FusionConfig | None = None
    pool_size: int = Field(200, ge=1, description="Depth each retriever hands to fusion.")
    rank: LTRConfig | None = Field(None, description="learned ranker (trained on validation)")
    rerank: RerankConfig | AspectConfig | GoalConfig | None = Field(
        None, description="LLM reranker (method verbalizer/permutation/pointwise), a "
        "classical aspect reranker (mmr/dpp/fair) or the goal-driven graph (goal)",
    )  # fmt: skip
    explain: ExplainConfig | None = Field(
        None, description="grounded reasons for the top items of the final ranking"
    )

    @model_validator(mode="after")
    def _fusion_when_several(self) -> PipelineConfig:
        if len(self.retrievers) > 1 and self.fusion is None:
            self.fusion = FusionConfig()
        if self.fusion and self.fusion.weights and len(self.fusion.weights) != len(self.retrievers):
            raise ValueError(
                f"fusion.weights has {len(self.fusion.weights)} values "
                f"for {len(self.retrievers)} retrievers"
            )
        return self


class RouteConfig(_Strict):
    """Cold requests (history length <= threshold, or free text) to ``cold``, the rest to
    ``warm``; each a pipeline name (of this config or built in) or a full pipeline."""

    cold: str | PipelineConfig
    warm: str | PipelineConfig
    threshold: int | None = Field(None, ge=0, description="None: chosen on validation users")
    thresholds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 5, 10, 20, 50, 100, 200], min_length=1
    )
    metric: str = "ndcg@10"
    query_to_cold: bool = Field(True, description="requests with free text take the cold path")
    users: int | None = Field(200, ge=1, description="validation users for the threshold")


class RoutedPipelineConfig(_Strict):
    name: str = Field(min_length=1)
    route: RouteConfig


class _Protocol(_Strict):
    """A split protocol: ``name`` picks it, the other fields are its parameters."""

    name: str

    def split(self, data: Dataset, seed: int) -> Split:
        params = self.model_dump()
        return make_split(data, params.pop("name"), seed, **params)


class ColdStartConfig(_Protocol):
    name: Literal["cold-start"] = "cold-start"
    n_users: int = Field(200, ge=1, description="Test users sampled per seed (all if fewer).")
    history: int = Field(5, ge=0, description="First items by time each test user keeps.")
    history_max: int | None = Field(
        None,
        ge=0,
        description="If set: each user keeps a seeded log-uniform count in "
        "[history, history_max] (mixed cold and warm users, for routing studies).",
    )
    relevance: float | None = Field(4.0, description="Min rating of a truth item (None: all).")
    n_valid: int = Field(0, ge=0, description="Validation users, split like test users.")


class LeaveLastOutConfig(_Protocol):
    name: Literal["leave-last-out"] = "leave-last-out"
    core: int | None = Field(None, ge=0, description="k-core filter (None: 5, 0 if prefiltered)")
    n_users: int | None = Field(None, ge=1, description="Evaluate a seeded sample of users.")


ProtocolConfig = Annotated[ColdStartConfig | LeaveLastOutConfig, Field(discriminator="name")]


class TabularDatasetConfig(_Strict):
    """Any interactions file (CSV/TSV/Parquet) plus an optional item catalog file."""

    interactions: str
    items: str | None = None
    name: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str = "rating"
    timestamp_col: str = "timestamp"
    title_col: str = "title"
    genres_col: str = "genres"


DEFAULT_METRICS = [
    "hr@10",
    "ndcg@10",
    "mrr@10",
    "recall@10",
    "recall@50",
    "recall@200",
    "unique@10",
    "gini@10",
    "novelty@10",
]


class ExperimentConfig(_Strict):
    """What ``recfunnel eval`` runs: a dataset, a protocol, seeds, metrics and pipelines."""

    dataset: str | TabularDatasetConfig = "ml-latest-small"
    data_dir: str | None = None
    protocol: ProtocolConfig = Field(default_factory=ColdStartConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    pipelines: list[PipelineConfig | RoutedPipelineConfig] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    rerank_users: Literal["all", "target-in-input"] = "all"
    """``target-in-input``: LlamaRec's evaluation, where the reranker only runs for test
    users with a relevant item in its input and the rest keep the previous stage's order.
    Accuracy metrics are exactly those of ``all`` (a permutation of a head without a
    relevant item leaves every relevant item where it was); it saves the LLM calls that
    cannot change them. Exposure metrics (unique@K, Gini) and per-user cost then describe
    the reranked users only."""

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("seeds must be >= 1 (a count) or a list of seeds")
            return list(range(v))
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        for name in v:
            try:
                parse_metric(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("pipelines", mode="before")
    @classmethod
    def _builtin_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [builtin_any(p).model_dump() if isinstance(p, str) else p for p in v]
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentConfig:
        names = [p.name for p in self.pipelines]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pipeline names must be unique; repeated: {sorted(dup)}")
        defined = {p.name: p for p in self.pipelines if isinstance(p, PipelineConfig)}
        for i, p in enumerate(self.pipelines):
            if isinstance(p, RoutedPipelineConfig):
                for side in ("cold", "warm"):
                    ref = getattr(p.route, side)
                    if isinstance(ref, str):
                        if ref not in defined and ref not in BUILTIN_PIPELINES:
                            raise ValueError(
                                f"pipelines.{i}.route.{side}: no pipeline named {ref!r}"
                            )
                        setattr(p.route, side, defined.get(ref) or builtin_pipeline(ref))
        return self


class SweepConfig(_Strict):
    """Pool-size sweep: one pipeline's reranker fed 20, 50, … candidates."""

    pipeline: str = Field(description="a pipeline of this config with a rerank stage")
    pool_sizes: list[int] = Field(default_factory=lambda: [20, 50, 100, 200], min_length=1)
    users: int | None = Field(50, ge=1, description="test users of the first seed (None: all)")

    @field_validator("pool_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(n < 2 for n in v):
            raise ValueError("pool sizes must be >= 2")
        return sorted(set(v))


class DiagnoseSection(_Strict):
    """What ``recfunnel diagnose`` adds to an experiment: baseline, prices, probes, sweep."""

    baseline: str = "popularity"
    compare: list[tuple[str, str]] = Field(
        default_factory=list, description="extra (pipeline, reference) pairs to test"
    )
    test_metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "hr@10"], min_length=1)
    price_prompt: float = Field(0.15, ge=0, description="$ per 1M prompt tokens")
    price_completion: float = Field(0.60, ge=0, description="$ per 1M completion tokens")
    position_users: int | None = Field(
        50, ge=1, description="test users rerun with a shuffled reranker input (None: all)"
    )
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for CIs")
    sweep: SweepConfig | None = None


class DiagnoseConfig(ExperimentConfig):
    """An experiment plus its ``[diagnose]`` section."""

    diagnose: DiagnoseSection = Field(default_factory=DiagnoseSection)

    @model_validator(mode="after")
    def _names_exist(self) -> DiagnoseConfig:
        names = {p.name for p in self.pipelines}
        d = self.diagnose
        wanted = [("diagnose.baseline", d.baseline)]
        wanted += [(f"diagnose.compare.{i}", n) for i, pair in enumerate(d.compare) for n in pair]
        if d.sweep is not None:
            wanted.append(("diagnose.sweep.pipeline", d.sweep.pipeline))
        for where, name in wanted:
            if name not in names:
                raise ValueError(f"{where}: no pipeline named {name!r} (have {sorted(names)})")
        for m in d.test_metrics:
            if m not in self.metrics:
                raise ValueError(f"diagnose.test_metrics: {m!r} is not in metrics")
        if d.sweep is not None:
            sweep = next(p for p in self.pipelines if p.name == d.sweep.pipeline)
            if getattr(sweep, "rerank", None) is None:
                raise ValueError(f"diagnose.sweep.pipeline {sweep.name!r} has no rerank stage")
        return self


def _builtins() -> dict[str, PipelineConfig]:
    hybrid = [CFConfig(), ContentConfig(), PopularityConfig()]
    llm = {
        f"hybrid+llm-{m}": PipelineConfig(
            name=f"hybrid+llm-{m}",
            retrievers=list(hybrid),
            fusion=FusionConfig(method="rrf"),
            rerank=RerankConfig(method=m),
        )
        for m in ("verbalizer", "permutation", "pointwise")
    }
    ltr = dict(retrievers=list(hybrid), fusion=FusionConfig(method="rrf"), rank=LTRConfig())
    return {
        **llm,
        "hybrid+ltr": PipelineConfig(name="hybrid+ltr", **ltr),
        "hybrid+ltr+llm-verbalizer": PipelineConfig(
            name="hybrid+ltr+llm-verbalizer", rerank=RerankConfig(), **ltr
        ),
        **{
            f"mf+{m}": PipelineConfig(
                name=f"mf+{m}", retrievers=[CFConfig()], rerank=AspectConfig(method=m)
            )
            for m in ("mmr", "dpp", "fair")
        },
        "mf": PipelineConfig(name="mf", retrievers=[CFConfig()]),
        "mf+llm-goal": PipelineConfig(
            name="mf+llm-goal", retrievers=[CFConfig()], rerank=GoalConfig()
        ),
        "popularity": PipelineConfig(name="popularity", retrievers=[PopularityConfig()]),
        "random": PipelineConfig(name="random", retrievers=[RandomConfig()]),
        "cf": PipelineConfig(name="cf", retrievers=[CFConfig()]),
        "itemknn": PipelineConfig(name="itemknn", retrievers=[CFConfig(model="itemknn")]),
        "content": PipelineConfig(name="content", retrievers=[ContentConfig()]),
        "sasrec": PipelineConfig(name="sasrec", retrievers=[SASRecConfig()]),
        "hybrid": PipelineConfig(
            name="hybrid", retrievers=list(hybrid), fusion=FusionConfig(method="rrf")
        ),
        "hybrid-weighted": PipelineConfig(
            name="hybrid-weighted", retrievers=list(hybrid), fusion=FusionConfig(method="weighted")
        ),
    }


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


def builtin_any(name: str) -> PipelineConfig | RoutedPipelineConfig:
    """A built-in pipeline, routed ones included."""
    routed = _routed()
    return routed[name] if name in routed else builtin_pipeline(name)


BUILTIN_PIPELINES = (*_builtins(), *_routed())


def format_validation(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        lines.append(f"  {loc or '(top level)'}: {err['msg']}")
    return f"invalid config {source}:\n" + "\n".join(lines)


C = TypeVar("C", bound=BaseModel)


def parse_config(
    data: dict[str, Any],
    source: str = "(dict)",
    cls: type[C] = ExperimentConfig,  # type: ignore[assignment]
) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, source)) from None


def load_config(
    path: str | Path,
    cls: type[C] = ExperimentConfig,  # type: ignore[assignment]
) -> C:
    """Read and validate a TOML experiment file (``cls``: which config it must be)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}") from None
    return parse_config(data, str(p), cls)
