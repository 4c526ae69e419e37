"""The ANN index: exact flat search, HNSW, and HNSW over an uncentred projection."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recfunnel.core.errors import ConfigError
from recfunnel.stages.retrieve.ann import AnnIndex


def embeddings(n: int, d: int = 96, rank: int = 12, seed: int = 0) -> np.ndarray:
    """Unit vectors shaped like sentence embeddings: a strong shared mean direction, most
    variance in a few directions, a little isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d))
    x = 3.0 * rng.standard_normal(d) + rng.standard_normal((n, rank)) @ basis
    x += 0.8 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = embeddings(4000)
    q = embeddings(200, seed=1)
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :20]
    return x, q, truth


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, q, truth = data
    scores, ids = AnnIndex("flat").build(x).search(q, 20)
    assert recall(ids, truth) == 1.0
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)


def test_projected_hnsw_reranks_exactly(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, q, truth = data
    index = AnnIndex("hnsw", dim=16, refine=4).build(x)
    scores, ids = index.search(q, 20)
    assert recall(ids, truth) >= 0.95
    # the shortlist is re-scored on the full vectors: scores are exact and sorted
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall(AnnIndex("hnsw", dim=16, refine=1).build(x).search(q, 20)[1], truth) < 0.95


def test_sq8_codes_rerank_exactly(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, q, truth = data
    scores, ids = AnnIndex("hnsw", codes="sq8", refine=1.5).build(x).search(q, 20)
    assert recall(ids, truth) >= 0.97
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)


def test_projection_keeps_the_mean_term(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """faiss's PCA centres; trained on the items alone it drops each item's mean·x term."""
    x, q, truth = data
    ours = recall(AnnIndex("hnsw", dim=16, refine=1).build(x).search(q, 20)[1], truth)
    pca = faiss.PCAMatrix(x.shape[1], 16)
    pca.train(x)
    centred = np.argsort(-(pca.apply(q) @ pca.apply(x).T), axis=1)[:, :20]
    assert ours > recall(centred, truth) + 0.1


def test_builds_are_reproducible(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, q, _ = data
    for kw in ({}, {"dim": 16}, {"codes": "sq8"}):
        a = AnnIndex("hnsw", **kw).build(x).search(q, 20)[1]  # type: ignore[arg-type]
        b = AnnIndex("hnsw", **kw).build(x).search(q, 20)[1]  # type: ignore[arg-type]
        np.testing.assert_array_equal(a, b)


def test_shortlist_longer_than_the_catalog() -> None:
    x = embeddings(30)
    scores, ids = AnnIndex("hnsw", dim=8, refine=3).build(x).search(x[:5], 25)
    assert (ids >= 0).all() and (ids < 30).all()
    assert all(len(set(row)) == 25 for row in ids)
    assert (ids[:, 0] == np.arange(5)).all()  # each item is its own nearest
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "flat", "dim": 16}, "hnsw_dim applies to index = 'hnsw' only"),
        ({"kind": "hnsw", "refine": 0.5}, "refine must be >= 1"),
        ({"kind": "flat", "codes": "sq8"}, "hnsw_codes applies to index = 'hnsw' only"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnnIndex(**kwargs)  # type: ignore[arg-type]


def test_projection_must_be_smaller(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ConfigError, match="hnsw_dim must be between 2 and 95 for 96-d"):
        AnnIndex("hnsw", dim=96).build(data[0])
