"""GroupLens' Serendipity-2018 (``serendipity-sac2018.zip``): MovieLens ratings of 104,661 users
plus 481 users' answers to a survey on how serendipitous five of their movies were.

Format source: the dataset's own README (``serendipity-sac2018-readme.txt`` on
files.grouplens.org, whose full text is mirrored in public GitHub copies), which says:

- all files are UTF-8 CSV with one header row; ``movies.csv`` and ``tags.csv`` quote every
  value;
- ``training.csv``: userId, movieId, rating, timestamp (9,997,850 ratings) -- every rating
  *except* those in ``answers.csv``;
- ``answers.csv``: userId, movieId, rating, timestamp, predictedRating, s1..s8 (statement
  agreement 1-5, NA = don't remember), q (when first watched, 1-7) and the binary labels
  s_ser_rel, s_ser_find, s_ser_imp, s_ser_rec, m_ser_rel, m_ser_find, m_ser_imp, m_ser_rec
  (2,150 rows, 481 users);
- ``movies.csv``: movieId, title, releaseDate, directedBy, starring, imdbId, tmdbId, genres;
  directors, cast and genres are each separated by commas;
- ``tags.csv`` (userId, movieId, tag, timestamp), ``recommendations.csv`` (userId, movieId)
  and ``tag_genome.csv`` (movieId, tag, relevance; 12.4M rows, not read here).

Since the answers carry their own rating and timestamp and are missing from training.csv,
they are added back to the interactions (10,000,000 ratings in all, as the README counts);
the survey answers themselves are kept in ``Dataset.meta["answers"]``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.core.types import Dataset
from recfunnel.data._io import read_table, require_columns
from recfunnel.data.movielens import build_movielens, title_year

log = logging.getLogger(__name__)

NAME = "serendipity-2018"  # the registry's name for it
RATING_COLS = ("userId", "movieId", "rating", "timestamp")
MAX_STARS = 5  # cast members named in an item's text; enough to recognise a film


def split_list(raw: object) -> list[str]:
    """Names in a comma-separated field ('Joel Coen, Ethan Coen'); also accepts '|'."""
    if not isinstance(raw, str):
        return []
    return [p.strip() for p in raw.replace("|", ",").split(",") if p.strip()]


def _people_text(directed: pd.Series, starring: pd.Series) -> list[str]:
    """'Directed by X, Y. Starring A, B, C' for each movie, empty where nothing is known."""
    out = []
    for d, s in zip(directed, starring, strict=True):
        parts = []
        if names := split_list(d):
            parts.append("Directed by " + ", ".join(names))
        if names := split_list(s):
            parts.append("Starring " + ", ".join(names[:MAX_STARS]))
        out.append(". ".join(parts))
    return out


def _years(movies: pd.DataFrame) -> list[int | None]:
    """Release year from ``releaseDate`` (YYYY-MM-DD), else from a '(1995)' title suffix."""
    titles = movies["title"].astype(str)
    if "releaseDate" in movies.columns:
        released = pd.to_datetime(movies["releaseDate"], errors="coerce", format="mixed")
        rel_years = released.dt.year
    else:
        rel_years = pd.Series(np.nan, index=movies.index)
    return [
        int(ry) if pd.notna(ry) else title_year(t) for ry, t in zip(rel_years, titles, strict=True)
    ]


def load_serendipity(path: Path) -> Dataset:
    """Load Serendipity-2018: ratings from training.csv plus answers.csv, catalog text with
    genres, user tags, director and stars; survey answers in ``meta["answers"]``."""
    ratings = read_table(
        path / "training.csv",
        usecols=list(RATING_COLS),
        dtype={"userId": np.int64, "movieId": np.int64, "rating": np.float64},
    )
    require_columns(ratings, RATING_COLS, path / "training.csv")

    meta: dict[str, object] = {}
    answers_file = path / "answers.csv"
    if answers_file.is_file():
        answers = read_table(answers_file)
        require_columns(answers, RATING_COLS, answers_file)
        rated = answers.dropna(subset=list(RATING_COLS))
        if len(rated) < len(answers):
            dropped = len(answers) - len(rated)
            log.warning("%s: %d answers lack a rating or timestamp", answers_file, dropped)
        extra = rated[list(RATING_COLS)].astype(ratings.dtypes.to_dict())
        ratings = pd.concat([ratings, extra], ignore_index=True)
        meta["answers"] = answers
        n_users = answers["userId"].nunique()
        log.info("%s: %d survey answers from %d users", path.name, len(answers), n_users)

    movies = read_table(path / "movies.csv", keep_default_na=False, na_values=[""])
    require_columns(movies, ("movieId", "title"), path / "movies.csv")
    genres_raw = movies["genres"] if "genres" in movies.columns else pd.Series("", movies.index)
    frame = pd.DataFrame(
        {
            "movieId": movies["movieId"].astype(np.int64),
            "title": movies["title"].fillna("").astype(str),
            "genres": [
                tuple(g for g in split_list(raw) if g != "(no genres listed)") for raw in genres_raw
            ],
        }
    )
    empty = pd.Series(None, index=movies.index, dtype=object)
    people = _people_text(
        movies["directedBy"] if "directedBy" in movies.columns else empty,
        movies["starring"] if "starring" in movies.columns else empty,
    )

    tags_file = path / "tags.csv"
    tags = read_table(tags_file, usecols=["movieId", "tag"]) if tags_file.is_file() else None
    dataset = build_movielens(NAME, ratings, frame, tags, years=_years(movies), extra_text=people)
    return replace(dataset, meta=meta)
