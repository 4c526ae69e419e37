"""Retrieval stages (batched candidate generators) and the fusion of their pools."""
