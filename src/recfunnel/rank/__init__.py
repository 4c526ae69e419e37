"""Learned ranking stages between retrieval and the LLM reranker."""
