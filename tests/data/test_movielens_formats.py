"""ml-100k and ml-1m loaders on small files written in the original formats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.core.errors import DatasetFormatError, DatasetNotFound
from recfunnel.data.movielens import load_ml_1m, load_ml_100k


def test_ml100k_counts_genres_years(tmp_path: Path, write_ml100k: Callable[[Path], Path]) -> None:
    ds = load_ml_100k(write_ml100k(tmp_path / "ml-100k"))
    assert ds.name == "ml-100k"
    assert len(ds.catalog) == 4
    assert len(ds.interactions) == 5
    assert ds.interactions.n_users == 3
    cat = ds.catalog.frame.set_index("item_id")
    assert cat.loc[302, "genres"] == ("Crime", "Film-Noir", "Mystery", "Thriller")
    assert cat.loc[242, "genres"] == ("Comedy",)
    assert cat.loc[267, "genres"] == ()  # the 'unknown' flag is not a genre
    assert cat.loc[377, "title"] == "Café Noir"  # Latin-1 decoded
    assert cat.loc[377, "genres"] == ("Comedy", "Drama", "Romance")
    assert cat.loc[302, "year"] == 1997  # from the title
    assert cat.loc[377, "year"] == 1996  # no year in the title: from the release date
    assert cat.loc[377, "text"].startswith("Café Noir (1996). Genres: Comedy, Drama, Romance")
    assert pd.isna(cat.loc[267, "year"])  # no year anywhere


def test_ml100k_ratings_and_timestamps(
    tmp_path: Path, write_ml100k: Callable[[Path], Path]
) -> None:
    ds = load_ml_100k(write_ml100k(tmp_path / "ml-100k"))
    f = ds.interactions.frame
    u196 = ds.interactions.user_index(196)
    rows = f[f["user"] == u196].sort_values("timestamp")
    assert ds.catalog.ids_of(rows["item"].to_numpy()) == [242, 302]
    assert rows["rating"].tolist() == [3.0, 4.0]
    assert rows["timestamp"].tolist() == [881250949.0, 881251000.0]
    assert ds.interactions.has_ratings and ds.interactions.has_timestamps
    assert ds.timestamps_real


def test_ml100k_bad_flags(tmp_path: Path, write_ml100k: Callable[[Path], Path]) -> None:
    folder = write_ml100k(tmp_path / "ml-100k")
    (folder / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||url|0|1\n")
    with pytest.raises(DatasetFormatError, match="genre flags"):
        load_ml_100k(folder)


def test_ml100k_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=r"u\.data does not exist"):
        load_ml_100k(tmp_path)


ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "260::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "3086::Café Society (1995)::Drama\n"
)
ML1M_RATINGS = (
    "1::1193::5::978300760\n"
    "1::260::4::978300275\n"
    "2::1::3::978298709\n"
    "2::3086::1::978299000\n"
    "10::1193::2::978224375\n"
)


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(ML1M_MOVIES.encode("latin-1"))
    (folder / "ratings.dat").write_text(ML1M_RATINGS, encoding="ascii")
    return folder


def test_ml1m_counts_genres_years(ml1m: Path) -> None:
    ds = load_ml_1m(ml1m)
    assert ds.name == "ml-1m"
    assert len(ds.catalog) == 4
    assert len(ds.interactions) == 5
    assert ds.interactions.n_users == 3
    cat = ds.catalog.frame.set_index("item_id")
    assert cat.loc[260, "title"] == "Star Wars: Episode IV - A New Hope (1977)"  # ':' kept
    assert cat.loc[260, "genres"] == ("Action", "Adventure", "Fantasy", "Sci-Fi")
    assert cat.loc[1, "genres"] == ("Animation", "Children's", "Comedy")
    assert cat.loc[3086, "title"] == "Café Society (1995)"
    assert cat.loc[[1, 260, 1193, 3086], "year"].tolist() == [1995, 1977, 1975, 1995]


def test_ml1m_ratings_and_timestamps(ml1m: Path) -> None:
    ds = load_ml_1m(ml1m)
    f = ds.interactions.frame
    assert f["rating"].dtype == np.float64
    u1 = f[f["user"] == ds.interactions.user_index(1)].sort_values("timestamp")
    assert ds.catalog.ids_of(u1["item"].to_numpy()) == [260, 1193]
    assert u1["rating"].tolist() == [4.0, 5.0]
    assert u1["timestamp"].tolist() == [978300275.0, 978300760.0]
    assert sorted(ds.interactions.user_ids.tolist()) == [1, 2, 10]


def test_ml1m_rating_of_unknown_movie(ml1m: Path) -> None:
    with (ml1m / "ratings.dat").open("a") as f:
        f.write("3::999::4::978300000\n")
    with pytest.raises(DatasetFormatError, match="999"):
        load_ml_1m(ml1m)
