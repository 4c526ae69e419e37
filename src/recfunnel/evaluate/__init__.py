"""Metrics, diagnostics and the experiment runner."""

from recfunnel.evaluate.metrics import evaluate, parse_metric

__all__ = ["evaluate", "parse_metric"]
