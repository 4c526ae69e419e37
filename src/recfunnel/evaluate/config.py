"""What ``recfunnel eval`` and ``recfunnel diagnose`` run: a dataset, a protocol, seeds,
metrics and pipelines (TOML files validated by pydantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from recfunnel.core.config import Strict, load_config, parse_config
from recfunnel.core.metrics import MetricName
from recfunnel.core.types import Dataset
from recfunnel.data.load import load_dataset
from recfunnel.data.splits import ColdStartConfig, ProtocolConfig
from recfunnel.data.tabular import TabularDatasetConfig
from recfunnel.engine.config import EngineConfig
from recfunnel.pipeline.config import (
    AnyPipelineConfig,
    PipelineConfig,
    RoutedPipelineConfig,
    builtin_any,
)
from recfunnel.stages.registry import stage_class

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


class ExperimentConfig(Strict):
    """What ``recfunnel eval`` runs: a dataset, a protocol, seeds, metrics and pipelines."""

    dataset: str | TabularDatasetConfig = "ml-latest-small"
    data_dir: str | None = None
    protocol: ProtocolConfig = Field(default_factory=ColdStartConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    metrics: list[MetricName] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    pipelines: list[AnyPipelineConfig] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    rerank_users: Literal["all", "target-in-input"] = "all"
    """``target-in-input``: LlamaRec's evaluation, where the reranker only runs for test
    users with a relevant item in its input and the rest keep the previous stage's order.
    Accuracy metrics are exactly those of ``all`` (a permutation of a head without a
    relevant item leaves every relevant item where it was); it saves the LLM calls that
    cannot change them. Exposure metrics (unique@K, Gini) and per-user cost then describe
    the reranked users only."""
    allow_unchecked_adapters: bool = Field(
        False,
        description="evaluate LoRA adapters that have no training record beside them (their "
        "training data cannot be checked against this evaluation's held-out users)",
    )

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("seeds must be >= 1 (a count) or a list of seeds")
            return list(range(v))
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
                p.resolve(defined, f"pipelines.{i}.route")
        return self

    def load_data(self) -> Dataset:
        """The experiment's dataset (a named one is fetched on first use)."""
        if isinstance(self.dataset, TabularDatasetConfig):
            return self.dataset.load()
        return load_dataset(self.dataset, self.data_dir)


class SweepConfig(Strict):
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


class DiagnoseSection(Strict):
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
    permutation_repeats: int = Field(
        5, ge=1, description="learned rankers: shuffles per feature for permutation importance"
    )
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
            if not isinstance(sweep, PipelineConfig) or not any(
                stage_class(s.kind).probed for s in sweep.stages
            ):
                raise ValueError(f"diagnose.sweep.pipeline {sweep.name!r} has no rerank stage")
        return self


E = TypeVar("E", bound=ExperimentConfig)


def parse_experiment(data: dict[str, Any], cls: type[E] = ExperimentConfig,  # type: ignore[assignment]
                     source: str = "(dict)") -> E:  # fmt: skip
    """An experiment (or diagnosis, with ``cls``) from a dict, every bad field named."""
    return parse_config(data, cls, source)


def load_experiment(path: str | Path, cls: type[E] = ExperimentConfig) -> E:  # type: ignore[assignment]
    """Read and validate an experiment TOML file (``cls``: which config it must be)."""
    return load_config(path, cls)
