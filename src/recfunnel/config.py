"""Experiment and pipeline configuration (TOML files validated by pydantic).

A bad field is reported by its dotted path, e.g. ``pipelines.1.retrievers.0.factors``, so
a user can find it in the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recfunnel.errors import ConfigError
from recfunnel.evaluate.metrics import parse_metric
from recfunnel.rerank.llm import RerankConfig
from recfunnel.retrieve.cf import CFConfig
from recfunnel.retrieve.content import ContentConfig
from recfunnel.retrieve.fusion import FusionConfig
from recfunnel.retrieve.popularity import PopularityConfig, RandomConfig

RetrieverConfig = Annotated[
    PopularityConfig | RandomConfig | CFConfig | ContentConfig, Field(discriminator="kind")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineConfig(_Strict):
    """Stages of one funnel: retrievers (fused when several) and, later, ranker and reranker."""

    name: str = Field(min_length=1)
    retrievers: list[RetrieverConfig] = Field(min_length=1)
    fusion: FusionConfig | None = None
    pool_size: int = Field(200, ge=1, description="Depth each retriever hands to fusion.")
    rerank: RerankConfig | None = None

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


class ColdStartConfig(_Strict):
    name: Literal["cold-start"] = "cold-start"
    n_users: int = Field(200, ge=1, description="Test users sampled per seed (all if fewer).")
    history: int = Field(5, ge=0, description="First items by time each test user keeps.")
    relevance: float | None = Field(4.0, description="Min rating of a truth item (None: all).")
    n_valid: int = Field(0, ge=0, description="Validation users, split like test users.")


class LeaveLastOutConfig(_Strict):
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
    pipelines: list[PipelineConfig] = Field(min_length=1)

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
            return [builtin_pipeline(p).model_dump() if isinstance(p, str) else p for p in v]
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentConfig:
        names = [p.name for p in self.pipelines]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pipeline names must be unique; repeated: {sorted(dup)}")
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
    return {
        **llm,
        "popularity": PipelineConfig(name="popularity", retrievers=[PopularityConfig()]),
        "random": PipelineConfig(name="random", retrievers=[RandomConfig()]),
        "cf": PipelineConfig(name="cf", retrievers=[CFConfig()]),
        "itemknn": PipelineConfig(name="itemknn", retrievers=[CFConfig(model="itemknn")]),
        "content": PipelineConfig(name="content", retrievers=[ContentConfig()]),
        "hybrid": PipelineConfig(
            name="hybrid", retrievers=list(hybrid), fusion=FusionConfig(method="rrf")
        ),
        "hybrid-weighted": PipelineConfig(
            name="hybrid-weighted", retrievers=list(hybrid), fusion=FusionConfig(method="weighted")
        ),
    }


def builtin_pipeline(name: str) -> PipelineConfig:
    """A named pipeline that needs no config file (``--pipelines popularity,cf``)."""
    table = _builtins()
    if name not in table:
        raise ConfigError(f"unknown pipeline {name!r}; built-in: {', '.join(table)}")
    return table[name]


BUILTIN_PIPELINES = tuple(_builtins())


def format_validation(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        lines.append(f"  {loc or '(top level)'}: {err['msg']}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "(dict)") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, source)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML experiment file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}") from None
    return parse_config(data, str(p))
