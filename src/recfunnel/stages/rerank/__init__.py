"""Reranking stages: LLM listwise/pointwise methods, the goal-driven graph walker, LLM
feature stages for a learned ranker, classical aspect rerankers (MMR, DPP, fair) and an
exposure-aware popularity penalty."""
