"""Serendipity-2018 loader on small files in the format its README describes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recfunnel.core.errors import DatasetFormatError
from recfunnel.data.serendipity import load_serendipity, split_list

TRAINING = """userId,movieId,rating,timestamp
11,1,4.0,1262304000
11,2,3.5,1262305000
12,1,5.0,1400000000
12,3,2.0,1400000100
13,2,0.5,1500000000
"""

# All values quoted, names and genres separated by commas, UTF-8 (as the README says).
MOVIES = """"movieId","title","releaseDate","directedBy","starring","imdbId","tmdbId","genres"
"1","Toy Story","1995-11-22","John Lasseter","Tim Allen, Tom Hanks, Don Rickles, Jim Varney, \
Wallace Shawn, John Ratzenberger","0114709","862","Adventure, Animation, Children, Comedy, Fantasy"
"2","Amélie","2001-04-25","Jean-Pierre Jeunet","Audrey Tautou, Mathieu Kassovitz","0211915",\
"194","Comedy, Romance"
"3","Heat (1995)","","Michael Mann","Al Pacino, Robert De Niro","0113277","949",\
"Action, Crime, Thriller"
"4","The ""Quoted"" Film","2017-01-01","","","","","(no genres listed)"
"""

ANSWERS = """userId,movieId,rating,timestamp,predictedRating,s1,s2,s3,s4,s5,s6,s7,s8,q,\
s_ser_rel,s_ser_find,s_ser_imp,s_ser_rec,m_ser_rel,m_ser_find,m_ser_imp,m_ser_rec
11,3,4.5,1491000000,3.9,5,4,2,4,4,5,5,4,2,TRUE,TRUE,FALSE,TRUE,TRUE,TRUE,FALSE,TRUE
12,4,4.0,1491000500,NA,1,2,NA,2,1,1,4,2,7,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE
"""

TAGS = """"userId","movieId","tag","timestamp"
"11","1","pixar","1300000000"
"12","1","Pixar","1300000001"
"12","1","toys","1300000002"
"13","2","paris","1300000003"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "serendipity-sac2018"
    d.mkdir()
    (d / "training.csv").write_text(TRAINING, encoding="utf-8")
    (d / "movies.csv").write_text(MOVIES, encoding="utf-8")
    (d / "answers.csv").write_text(ANSWERS, encoding="utf-8")
    (d / "tags.csv").write_text(TAGS, encoding="utf-8")
    return d


def test_ratings_include_answers(folder: Path) -> None:
    ds = load_serendipity(folder)
    assert ds.name == "serendipity-2018"
    inter = ds.interactions
    assert len(inter) == 5 + 2  # training.csv plus the rated movies of answers.csv
    assert inter.n_users == 3
    f = inter.frame
    u11 = f[f["user"] == inter.user_index(11)].sort_values("timestamp")
    assert ds.catalog.ids_of(u11["item"].to_numpy()) == [1, 2, 3]
    assert u11["rating"].tolist() == [4.0, 3.5, 4.5]
    assert u11["timestamp"].iloc[-1] == 1491000000.0
    assert ds.timestamps_real and inter.has_ratings


def test_answers_kept_in_meta(folder: Path) -> None:
    answers = load_serendipity(folder).meta["answers"]
    assert isinstance(answers, pd.DataFrame)
    assert len(answers) == 2
    assert answers["s_ser_find"].tolist() == [True, False]
    assert pd.isna(answers.loc[1, "predictedRating"]) and pd.isna(answers.loc[1, "s3"])


def test_catalog_text(folder: Path) -> None:
    cat = load_serendipity(folder).catalog.frame.set_index("item_id")
    assert len(cat) == 4
    assert cat.loc[1, "genres"] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert cat.loc[1, "year"] == 1995  # from releaseDate
    assert cat.loc[3, "year"] == 1995  # no date: from the title
    assert cat.loc[2, "title"] == "Amélie"
    assert cat.loc[4, "title"] == 'The "Quoted" Film'
    assert cat.loc[4, "genres"] == ()
    text = cat.loc[1, "text"]
    assert text.startswith("Toy Story (1995). Genres: Adventure, Animation")
    assert "Tags: pixar, toys" in text  # case-folded, most used first
    assert "Directed by John Lasseter" in text
    assert "Starring Tim Allen, Tom Hanks, Don Rickles, Jim Varney, Wallace Shawn." in text + "."
    assert "Ratzenberger" not in text  # at most five stars
    assert "Directed by" not in cat.loc[4, "text"]


def test_without_optional_files(folder: Path) -> None:
    (folder / "answers.csv").unlink()
    (folder / "tags.csv").unlink()
    ds = load_serendipity(folder)
    assert len(ds.interactions) == 5
    assert "answers" not in ds.meta


def test_missing_column(folder: Path) -> None:
    (folder / "training.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    with pytest.raises(DatasetFormatError, match=r"training\.csv"):
        load_serendipity(folder)


def test_split_list() -> None:
    assert split_list("Joel Coen, Ethan Coen") == ["Joel Coen", "Ethan Coen"]
    assert split_list("Drama|Romance") == ["Drama", "Romance"]
    assert split_list(float("nan")) == []
