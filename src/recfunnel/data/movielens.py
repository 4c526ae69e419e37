"""MovieLens loaders: ml-latest-small (CSV), ml-100k (u.data / u.item) and ml-1m (``::`` files).

All three become the same :class:`~recfunnel.types.Dataset`: explicit ratings with real
timestamps, and a catalog whose text is title (year), genres and the most common tags.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.core.errors import DatasetFormatError
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data._io import read_table

_YEAR = re.compile(r"\((\d{4})\)\s*$")

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def title_year(title: str) -> int | None:
    """The release year MovieLens puts at the end of a title, e.g. 'Heat (1995)'."""
    m = _YEAR.search(title.strip())
    return int(m.group(1)) if m else None


def split_genres(raw: str) -> tuple[str, ...]:
    if not isinstance(raw, str) or raw in ("(no genres listed)", ""):
        return ()
    return tuple(g for g in raw.split("|") if g)


def top_tags(tags: pd.DataFrame, max_tags: int = 5, key: str = "movieId") -> dict[int, list[str]]:
    """The ``max_tags`` most frequent tags of each item (case-folded), most frequent first.

    ``key`` names the item column, so other datasets with user tags (Last.fm) can reuse it.
    """
    if tags.empty:
        return {}
    t = tags.assign(tag=tags["tag"].astype(str).str.strip().str.lower())
    t = t[t["tag"] != ""]
    counts = t.groupby([key, "tag"]).size().reset_index(name="n")
    counts = counts.sort_values([key, "n", "tag"], ascending=[True, False, True])
    top = counts.groupby(key, sort=False).head(max_tags).groupby(key, sort=False)["tag"].agg(list)
    return dict(zip(top.index.astype(np.int64).tolist(), top.tolist(), strict=True))


def build_movielens(
    name: str,
    ratings: pd.DataFrame,
    movies: pd.DataFrame,
    tags: pd.DataFrame | None = None,
    *,
    years: Sequence[int | None] | None = None,
    extra_text: Sequence[str] | None = None,
) -> Dataset:
    """Assemble a dataset from frames with MovieLens column names.

    ``ratings``: userId, movieId, rating, timestamp; ``movies``: movieId, title, genres
    (tuple or '|'-joined); ``tags``: movieId, tag. Ratings of movies not in ``movies`` are an
    error, since they could never be shown to a user. ``years`` (one per movie) replaces the
    year parsed from the title, for files that carry a release date instead; ``extra_text``
    (one per movie, e.g. director and stars) is appended to each item's text.
    """
    for col in ("userId", "movieId", "rating", "timestamp"):
        if col not in ratings.columns:
            raise DatasetFormatError(f"{name}: ratings lack column {col!r}")
    genres = [g if isinstance(g, tuple) else split_genres(g) for g in movies["genres"]]
    titles = movies["title"].astype(str).str.strip().tolist()
    tag_map = top_tags(tags) if tags is not None else {}
    catalog = Catalog.build(
        item_ids=movies["movieId"].astype(np.int64).to_numpy(),
        titles=titles,
        genres=genres,
        years=list(years) if years is not None else [title_year(t) for t in titles],
        tags=[tag_map.get(int(m), []) for m in movies["movieId"]],
        extra_text=extra_text,
    )
    item_idx = pd.Index(catalog.frame["item_id"]).get_indexer(ratings["movieId"])
    if (item_idx < 0).any():
        bad = ratings["movieId"].to_numpy()[item_idx < 0][0]
        raise DatasetFormatError(f"{name}: rating of movie {bad} that the movie file lacks")
    interactions = Interactions.build(
        users=ratings["userId"].to_numpy(),
        items=item_idx,
        n_items=len(catalog),
        rating=ratings["rating"].to_numpy(dtype=np.float64),
        timestamp=ratings["timestamp"].to_numpy(dtype=np.float64),
    )
    return Dataset(name=name, interactions=interactions, catalog=catalog)


def load_ml_latest_small(path: Path) -> Dataset:
    """GroupLens' ml-latest-small (also the layout of ml-latest and ml-25m/ml-32m)."""
    ratings = read_table(path / "ratings.csv")
    movies = read_table(path / "movies.csv")
    tags_file = path / "tags.csv"
    tags = read_table(tags_file) if tags_file.is_file() else None
    return build_movielens(path.name, ratings, movies, tags)


def load_ml_100k(path: Path) -> Dataset:
    """GroupLens' ml-100k: ``u.data`` (tab-separated user, item, rating, timestamp) and
    ``u.item`` (pipe-separated, Latin-1: id|title|release date|video date|IMDb URL|19 flags).

    The year comes from the title, else from the release date ('01-Jan-1995'); the
    'unknown' genre flag is a placeholder, so it is not listed as a genre.
    """
    ratings = read_table(
        path / "u.data",
        sep="\t",
        header=None,
        names=["userId", "movieId", "rating", "timestamp"],
        dtype=np.int64,
    )
    flag_cols = [f"g{i}" for i in range(len(ML100K_GENRES))]
    items = read_table(
        path / "u.item",
        sep="|",
        header=None,
        names=["movieId", "title", "release", "video", "url", *flag_cols],
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        dtype=str,
    )
    flags = items[flag_cols]
    if not flags.isin(["0", "1"]).all().all():
        raise DatasetFormatError(f"{path / 'u.item'}: expected 19 genre flags (0/1) per line")
    names = np.array(ML100K_GENRES, dtype=object)
    genres = [tuple(g for g in names[row] if g != "unknown") for row in (flags == "1").to_numpy()]
    release_year = pd.to_numeric(items["release"].str[-4:], errors="coerce")
    title_years = [title_year(t) for t in items["title"]]
    years = [
        ty if ty is not None else (None if pd.isna(ry) else int(ry))
        for ty, ry in zip(title_years, release_year, strict=True)
    ]
    movies = pd.DataFrame(
        {"movieId": pd.to_numeric(items["movieId"]), "title": items["title"], "genres": genres}
    )
    return build_movielens(path.name, ratings, movies, years=years)


def load_ml_1m(path: Path) -> Dataset:
    """GroupLens' ml-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and
    ``movies.dat`` (``MovieID::Title::Genres``, Latin-1, genres '|'-separated)."""
    # '::' needs pandas' slow python engine; splitting on ':' keeps the C parser, and the
    # empty fields between the colons are skipped (no field of ratings.dat contains ':').
    ratings = read_table(
        path / "ratings.dat",
        sep=":",
        header=None,
        usecols=[0, 2, 4, 6],
        names=["userId", "_a", "movieId", "_b", "rating", "_c", "timestamp"],
        dtype={
            "userId": np.int64,
            "movieId": np.int64,
            "rating": np.float64,
            "timestamp": np.int64,
        },
    )
    # Titles may contain ':' (and commas, quotes), so movies.dat is split on '::' by hand.
    lines = pd.Series((path / "movies.dat").read_text(encoding="latin-1").splitlines())
    lines = lines[lines.str.strip() != ""]
    parts = lines.str.split("::", n=2, expand=True)
    if parts.shape[1] != 3 or parts.isna().any().any():
        raise DatasetFormatError(f"{path / 'movies.dat'}: expected MovieID::Title::Genres lines")
    movies = pd.DataFrame(
        {
            "movieId": pd.to_numeric(parts[0], errors="coerce"),
            "title": parts[1],
            "genres": parts[2].str.strip(),
        }
    ).reset_index(drop=True)
    if movies["movieId"].isna().any():
        raise DatasetFormatError(f"{path / 'movies.dat'}: non-numeric MovieID")
    movies["movieId"] = movies["movieId"].astype(np.int64)
    return build_movielens(path.name, ratings, movies)
