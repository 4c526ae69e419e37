"""Rerankers: LLM listwise/pointwise methods (and, later, aspect rerankers)."""
