"""Reranking stages: LLM listwise/pointwise methods, the goal-driven graph walker, LLM
feature stages for a learned ranker, and classical aspect rerankers (MMR, DPP, fair)."""
