"""Pipelines: configs (a list of stages), the funnel that runs them, the cold/warm router,
and the leakage guard every run passes first."""

from recfunnel.pipeline.config import (
    BUILTIN_PIPELINES,
    AnyPipelineConfig,
    PipelineConfig,
    RouteConfig,
    RoutedPipelineConfig,
    builtin_any,
    builtin_pipeline,
)
from recfunnel.pipeline.funnel import Funnel, Shared, calibration_set, rows_with_target
from recfunnel.pipeline.protocol import Pipeline
from recfunnel.pipeline.router import Router, build_pipeline

__all__ = [
    "BUILTIN_PIPELINES",
    "AnyPipelineConfig",
    "Funnel",
    "Pipeline",
    "PipelineConfig",
    "RouteConfig",
    "RoutedPipelineConfig",
    "Router",
    "Shared",
    "build_pipeline",
    "builtin_any",
    "builtin_pipeline",
    "calibration_set",
    "rows_with_target",
]
