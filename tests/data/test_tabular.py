"""load_tabular on CSV, TSV and Parquet files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.core.errors import DatasetFormatError, DatasetNotFound
from recfunnel.data.tabular import load_tabular


@pytest.fixture
def csv_files(tmp_path: Path) -> tuple[Path, Path]:
    inter = tmp_path / "events.csv"
    inter.write_text(
        "user_id,item_id,rating,timestamp\n"
        "alice,10,4.5,100\n"
        "alice,20,3,200\n"
        "bob,10,5,150\n"
        "bob,30,2,160\n"  # 30 is not in the catalog
    )
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title,genres,year\n"
        "10,Heat,Action|Crime,1995\n"
        "20,Amélie,Comedy|Romance,\n"
        "40,Never Watched,,2001\n"
    )
    return inter, items


def test_csv_with_catalog(csv_files: tuple[Path, Path]) -> None:
    inter, items = csv_files
    ds = load_tabular(inter, items)
    assert ds.name == "events"
    assert ds.catalog.frame["item_id"].tolist() == [10, 20, 40, 30]  # catalog, then the rest
    cat = ds.catalog.frame.set_index("item_id")
    assert cat.loc[10, "genres"] == ("Action", "Crime")
    assert cat.loc[10, "year"] == 1995
    assert pd.isna(cat.loc[20, "year"])
    assert cat.loc[20, "title"] == "Amélie"
    assert cat.loc[30, "title"] == "30"  # no catalog row: titled by its id
    assert cat.loc[10, "text"] == "Heat (1995). Genres: Action, Crime"
    f = ds.interactions.frame
    assert len(f) == 4 and ds.interactions.n_users == 2
    assert ds.interactions.user_ids.tolist() == ["alice", "bob"]
    bob = f[f["user"] == ds.interactions.user_index("bob")]
    assert ds.catalog.ids_of(bob["item"].to_numpy()) == [10, 30]
    assert bob["rating"].tolist() == [5.0, 2.0]
    assert bob["timestamp"].tolist() == [150.0, 160.0]
    assert ds.timestamps_real and (f["weight"] == 1.0).all()


def test_only_interactions(tmp_path: Path) -> None:
    inter = tmp_path / "plays.tsv"
    inter.write_text("u\ti\tplays\n1\ta\t3\n1\tb\t1\n2\ta\t7\n")
    ds = load_tabular(inter, name="plays", user_col="u", item_col="i", weight_col="plays")
    assert ds.name == "plays"
    assert ds.catalog.frame["title"].tolist() == ["a", "b"]
    f = ds.interactions.frame
    assert f["weight"].tolist() == [3.0, 1.0, 7.0]
    assert f["rating"].isna().all() and f["timestamp"].isna().all()
    assert not ds.timestamps_real


def test_parquet_with_dates_and_list_genres(tmp_path: Path) -> None:
    inter = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "item_id": [5, 6, 5],
            "timestamp": pd.to_datetime(
                ["1970-01-01 00:01:40", "2000-01-01", "1970-01-02"], format="mixed"
            ),
        }
    ).to_parquet(inter)
    items = tmp_path / "items.parquet"
    pd.DataFrame(
        {
            "item_id": [5, 6],
            "title": ["Five", None],
            "genres": [["x", "y"], []],
            "year": [1999, 2000],
        }
    ).to_parquet(items)
    ds = load_tabular(inter, items)
    f = ds.interactions.frame
    assert f["timestamp"].tolist() == [100.0, 946684800.0, 86400.0]
    assert f["rating"].isna().all()
    cat = ds.catalog.frame.set_index("item_id")
    assert cat.loc[5, "genres"] == ("x", "y")
    assert cat.loc[6, "genres"] == ()
    assert cat.loc[6, "title"] == "6"  # a missing title falls back to the id
    assert cat.loc[6, "year"] == 2000


def test_text_dates_in_csv(tmp_path: Path) -> None:
    inter = tmp_path / "e.csv"
    inter.write_text("user_id,item_id,timestamp\n1,1,2020-01-01T00:00:00Z\n1,2,2020-01-02\n")
    f = load_tabular(inter).interactions.frame
    assert np.diff(f["timestamp"].to_numpy()).tolist() == [86400.0]


def test_missing_required_column(tmp_path: Path) -> None:
    inter = tmp_path / "e.csv"
    inter.write_text("user,item_id\n1,1\n")
    with pytest.raises(DatasetFormatError) as err:
        load_tabular(inter)
    assert "'user_id'" in str(err.value) and "'user', 'item_id'" in str(err.value)


def test_missing_item_column_in_catalog(csv_files: tuple[Path, Path]) -> None:
    inter, items = csv_files
    items.write_text("id,title\n10,Heat\n")
    with pytest.raises(DatasetFormatError, match=r"items\.csv.*'item_id'.*present: 'id', 'title'"):
        load_tabular(inter, items)


def test_named_weight_column_must_exist(csv_files: tuple[Path, Path]) -> None:
    with pytest.raises(DatasetFormatError, match="'plays'"):
        load_tabular(csv_files[0], weight_col="plays")


def test_missing_files(tmp_path: Path, csv_files: tuple[Path, Path]) -> None:
    with pytest.raises(DatasetNotFound, match=r"nope\.csv"):
        load_tabular(tmp_path / "nope.csv")
    with pytest.raises(DatasetNotFound, match=r"nope_items\.parquet"):
        load_tabular(csv_files[0], tmp_path / "nope_items.parquet")


def test_unknown_extension(tmp_path: Path) -> None:
    f = tmp_path / "events.json"
    f.write_text("{}")
    with pytest.raises(DatasetFormatError, match=r"unknown table format '\.json'"):
        load_tabular(f)


def test_duplicate_catalog_row(csv_files: tuple[Path, Path]) -> None:
    inter, items = csv_files
    items.write_text("item_id,title\n10,Heat\n10,Heat again\n")
    with pytest.raises(DatasetFormatError, match="item 10 has more than one row"):
        load_tabular(inter, items)


def test_text_ids_in_catalog_match_numeric_ids(tmp_path: Path) -> None:
    inter = tmp_path / "e.csv"
    inter.write_text("user_id,item_id\n1,7\n1,8\n")
    items = tmp_path / "i.csv"
    items.write_text("item_id,title\n7,Seven\nx9,Nine\n")
    cat = load_tabular(inter, items).catalog.frame
    assert cat["item_id"].tolist() == ["7", "x9", "8"]
    assert cat["title"].tolist() == ["Seven", "Nine", "8"]
