"""Named datasets: which files they have, how to load them, and where to fetch them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recfunnel.core.types import Dataset


@dataclass(frozen=True)
class Archive:
    """A published archive, downloaded on first use (or by ``recfunnel data fetch``)."""

    base: str
    """The publisher's base URL (``$RECFUNNEL_DATA_URL`` replaces it: a mirror)."""
    path: str
    """Where the archive sits under the base, e.g. ``movielens/ml-latest-small.zip``."""
    md5: str | None
    """The checksum GroupLens publishes beside the archive (``<url>.md5``); None = fetch that."""
    inner: str
    """The folder inside the zip that holds the files."""

    @property
    def url(self) -> str:
        return f"{self.base}/{self.path}"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str
    files: tuple[str, ...]
    loader: str
    """'module:function' taking the dataset folder and returning a Dataset (imported lazily)."""
    archive: Archive | None = None
    about: str = ""
    noun: str = "item"

    def load_fn(self) -> Callable[[Path], Dataset]:
        module, fn = self.loader.split(":")
        loaded: Callable[[Path], Dataset] = getattr(importlib.import_module(module), fn)
        return loaded


_GL = "https://files.grouplens.org/datasets"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "ml-latest-small",
            "ml-latest-small",
            ("ratings.csv", "movies.csv"),
            "recfunnel.data.movielens:load_ml_latest_small",
            Archive(_GL, "movielens/ml-latest-small.zip", None, "ml-latest-small"),
            "MovieLens latest-small: 100,836 ratings, 610 users, 9,742 movies",
            noun="movie",
        ),
        DatasetSpec(
            "ml-100k",
            "ml-100k",
            ("u.data", "u.item"),
            "recfunnel.data.movielens:load_ml_100k",
            Archive(_GL, "movielens/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "ml-100k"),
            "MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies",
            noun="movie",
        ),
        DatasetSpec(
            "ml-1m",
            "ml-1m",
            ("ratings.dat", "movies.dat"),
            "recfunnel.data.movielens:load_ml_1m",
            Archive(_GL, "movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ml-1m"),
            "MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,706 movies",
            noun="movie",
        ),
        DatasetSpec(
            "serendipity-2018",
            "serendipity-sac2018",
            ("training.csv", "movies.csv"),
            "recfunnel.data.serendipity:load_serendipity",
            Archive(
                _GL, "serendipity-sac2018/serendipity-sac2018.zip", None, "serendipity-sac2018"
            ),
            "MovieLens Serendipity 2018: ~10M ratings with serendipity answers",
            noun="movie",
        ),
        DatasetSpec(
            "lastfm-2k",
            "hetrec2011-lastfm-2k",
            ("user_artists.dat", "artists.dat"),
            "recfunnel.data.lastfm:load_lastfm",
            None,
            "HetRec 2011 Last.fm: 1,892 users, 17,632 artists, listening counts and tags",
            noun="artist",
        ),
        DatasetSpec(
            "amazon-games",
            "amazon-games-llmrank",
            ("Games-6k.item", "Games-6k.test.inter"),
            "recfunnel.data.amazon:load_amazon_games",
            None,
            "Amazon Video Games sequences as processed for LLMRank: 50,546 users, 16,859 items",
            noun="video game",
        ),
    ]
}
