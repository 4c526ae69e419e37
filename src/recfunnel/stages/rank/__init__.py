"""Learned ranking stages: LambdaRank over the trace's pools, item and history features."""
