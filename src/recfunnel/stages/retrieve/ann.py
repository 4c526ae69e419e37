"""faiss indexes over unit vectors, searched by inner product.

Three kinds, one place to build and search them (the content retriever and the ANN
benchmark both use this, so the benchmark measures what the retriever builds):

- ``flat``: exact search, one BLAS batch. Right up to ~100k items.
- ``hnsw``: an HNSW graph over the full vectors.
- ``hnsw`` with ``codes = "sq8"``: the graph stores 8-bit codes (a quarter of float32's
  memory traffic per distance) and its ``refine`` × depth shortlist is re-ranked with the
  exact inner product on the float vectors.
- ``hnsw`` with ``dim``: the graph holds the vectors projected on their top ``dim``
  *uncentred* principal directions, and the ``refine`` × depth candidates it returns are
  re-ranked with the exact inner product on the full vectors. Sentence embeddings keep most
  of their inner-product ranking in a few dozen directions (all-MiniLM-L6-v2 on
  ml-latest-small: the exact top 100 lie in the 64-d top 200 for 97% of profiles), while
  a graph walk over 64-d vectors costs a fraction of one over 384-d ones; exact search
  pays for every dimension of every item.

The projection is trained on the items *and their negations*: their mean is then zero, so
faiss's PCA does not centre, and the projected inner product is the full one restricted to
the top directions. (Centring would drop each item's ``mean · x`` term, which for
embeddings varies a lot between items, and recall with it.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal, Self

import numpy as np

from recfunnel.core.errors import ConfigError

HNSW_M = 32  # graph degree; 16 needs a much larger efSearch for the same recall, 48 is slower
PCA_SAMPLE = 100_000  # items the projection is fitted on; more changes nothing measurable


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads (None: leave as is), then restore: a
    single-threaded HNSW build inserts in a fixed order, so the same items give the same
    graph."""
    import faiss

    before = faiss.omp_get_max_threads()
    if n is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class AnnIndex:
    """An exact or HNSW inner-product index; search breadth is per call, never stored."""

    def __init__(
        self,
        kind: Literal["flat", "hnsw"] = "flat",
        *,
        ef_construction: int = 200,
        ef_search: int = 128,
        dim: int | None = None,
        refine: float = 2.0,
        codes: Literal["float", "sq8"] = "float",
        m: int = HNSW_M,
        seed: int = 0,
    ) -> None:
        if dim is not None and kind != "hnsw":
            raise ConfigError("hnsw_dim applies to index = 'hnsw' only")
        if codes != "float" and kind != "hnsw":
            raise ConfigError("hnsw_codes applies to index = 'hnsw' only")
        if refine < 1:
            raise ConfigError(f"refine must be >= 1 (got {refine})")
        self.kind = kind
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.dim = dim
        self.refine = refine
        self.codes = codes
        self.m = m
        self.seed = seed

    def build(self, x: np.ndarray, threads: int | None = 1) -> Self:
        """Index the rows of ``x``; ``threads=1`` (default) makes the HNSW graph
        reproducible, ``None`` builds on every core."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        d = x.shape[1]
        self.index_: Any
        if self.kind == "flat":
            self.index_ = faiss.IndexFlatIP(d)
            self.index_.add(x)
            return self
        if self.dim is not None and not 2 <= self.dim < d:
            raise ConfigError(f"hnsw_dim must be between 2 and {d - 1} for {d}-d vectors "
                              f"(got {self.dim})")  # fmt: skip
        gdim = self.dim or d
        faiss_any: Any = faiss  # the stubs type IndexHNSWSQ's quantizer kind wrongly
        graph: Any
        if self.codes == "sq8":
            qt = faiss.ScalarQuantizer.QT_8bit
            graph = faiss_any.IndexHNSWSQ(gdim, qt, self.m, faiss.METRIC_INNER_PRODUCT)
        else:
            graph = faiss.IndexHNSWFlat(gdim, self.m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        index: Any = graph  # faiss's wrappers below keep their parts alive themselves
        rng = np.random.default_rng(self.seed)
        sample = x[rng.choice(len(x), PCA_SAMPLE, replace=False)] if len(x) > PCA_SAMPLE else x
        if self.dim is not None:
            pca = faiss.PCAMatrix(d, self.dim)
            pca.train(np.vstack([sample, -sample]))
            index = faiss.IndexPreTransform(pca, graph)
        if self.reranks:
            index = faiss.IndexRefineFlat(index)
            index.k_factor = self.refine
        index.train(sample)
        with faiss_threads(threads):
            index.add(x)
        self.index_ = index
        return self

    def __len__(self) -> int:
        return int(self.index_.ntotal)

    def __getstate__(self) -> dict[str, Any]:
        """faiss indexes are SWIG objects: they travel (Ray, pickle) as faiss's own bytes."""
        import faiss

        state = dict(self.__dict__)
        if "index_" in state:
            state["index_"] = faiss.serialize_index(state["index_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import faiss

        if "index_" in state:
            state["index_"] = faiss.deserialize_index(state["index_"])
        self.__dict__.update(state)

    @property
    def reranks(self) -> bool:
        """Whether the graph's shortlist is re-scored on the full float vectors."""
        return self.kind == "hnsw" and (self.dim is not None or self.codes != "float")

    def shortlist(self, depth: int) -> int:
        """How many results the graph returns for ``depth``: more when they are re-ranked."""
        return math.ceil(depth * self.refine) if self.reranks else depth

    def search(self, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` (scores, ids) per row of ``q``; ids are -1 past the catalog."""
        import faiss

        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.kind == "flat":
            return self.index_.search(q, depth)
        faiss_any: Any = faiss  # the SearchParameters classes are missing from the type stubs
        base: Any = faiss_any.SearchParametersHNSW(
            efSearch=max(self.ef_search, self.shortlist(depth))
        )
        if not self.reranks:
            return self.index_.search(q, depth, params=base)
        if self.dim is not None:
            base = faiss_any.SearchParametersPreTransform(index_params=base)
        params = faiss_any.IndexRefineSearchParameters(k_factor=self.refine, base_index_params=base)
        return self.index_.search(q, depth, params=params)
