"""recfunnel: retrieval → ranker → LLM reranker, with every stage diagnosed by numbers."""

from recfunnel.types import (
    CandidateBatch,
    Candidates,
    Catalog,
    Dataset,
    EvalSet,
    Interactions,
    Request,
    Split,
)

__version__ = "0.1.0"

__all__ = [
    "CandidateBatch",
    "Candidates",
    "Catalog",
    "Dataset",
    "EvalSet",
    "Interactions",
    "Request",
    "Split",
    "__version__",
]
