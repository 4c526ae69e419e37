"""Last.fm (HetRec 2011) loader: the real files, and small files for the corner cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.core.types import Dataset
from recfunnel.data import load_dataset
from recfunnel.data.lastfm import load_lastfm


@pytest.fixture(scope="module")
def lastfm(shared_data: Path) -> Dataset:
    return load_dataset("lastfm-2k", data_dir=shared_data)


def test_counts_match_readme(lastfm: Dataset) -> None:
    assert lastfm.name == "lastfm-2k"
    assert lastfm.interactions.n_users == 1892
    assert len(lastfm.interactions) == 92834
    assert len(lastfm.catalog) == 17632


def test_weights_are_listening_counts(lastfm: Dataset, shared_data: Path) -> None:
    raw = pd.read_csv(shared_data / "hetrec2011-lastfm-2k" / "user_artists.dat", sep="\t")
    f = lastfm.interactions.frame
    assert f["weight"].sum() == raw["weight"].sum()
    assert f["rating"].isna().all() and f["timestamp"].isna().all()
    assert not lastfm.timestamps_real
    assert not lastfm.interactions.has_ratings and not lastfm.interactions.has_timestamps
    # first row of the file: user 2 listened to artist 51 13,883 times
    u2 = f[f["user"] == lastfm.interactions.user_index(2)]
    row = u2[u2["item"] == lastfm.catalog.index_of([51])[0]]
    assert row["weight"].tolist() == [13883.0]


def test_catalog_names_and_tags(lastfm: Dataset) -> None:
    cat = lastfm.catalog.frame.set_index("item_id")
    assert cat.loc[1098, "title"] == "Björk"  # artists.dat is UTF-8
    assert cat.loc[418, "title"] == "Sigur Rós"
    assert cat.loc[1686, "title"] == '"Weird Al" Yankovic'  # quotes are not CSV quoting
    assert cat.loc[289, "genres"] == ("pop", "dance", "female vocalists")
    assert cat.loc[289, "text"].startswith("Britney Spears. Genres: pop, dance, female vocalists")
    assert "español" in cat.loc[12915, "text"]  # tags.dat is Latin-1
    assert cat["genres"].map(len).max() == 3
    assert cat["year"].isna().all()
    # the five most used tags appear once each: genres 1-3, then tags 4-5
    text = cat.loc[289, "text"]
    assert text.count("Tags: ") == 1 and text.count("pop") == 1


def _write_small(folder: Path) -> Path:
    folder.mkdir()
    (folder / "user_artists.dat").write_bytes(
        b"userID\tartistID\tweight\r\n2\t51\t100\r\n2\t52\t7\r\n3\t51\t5\r\n3\t99\t1\r\n"
    )
    (folder / "artists.dat").write_bytes(
        "id\tname\turl\tpictureURL\n51\tDuran Duran\thttp://a\thttp://p\n"
        "52\tMotörhead\thttp://b\t\n60\tNA\thttp://c\thttp://q\n".encode()
    )
    (folder / "tags.dat").write_bytes(
        "tagID\ttagValue\r\n1\tnew wave\r\n2\tpop\r\n3\tmetal\r\n4\trock français\r\n".encode(
            "latin-1"
        )
    )
    rows = [(2, 51, 1), (3, 51, 1), (2, 51, 2), (2, 52, 3), (3, 52, 3), (2, 52, 4), (2, 7, 2)]
    (folder / "user_taggedartists.dat").write_bytes(
        b"userID\tartistID\ttagID\tday\tmonth\tyear\r\n"
        + b"".join(f"{u}\t{a}\t{t}\t1\t4\t2009\r\n".encode() for u, a, t in rows)
    )
    return folder


def test_small_files(tmp_path: Path) -> None:
    ds = load_lastfm(_write_small(tmp_path / "hetrec2011-lastfm-2k"))
    cat = ds.catalog.frame.set_index("item_id")
    assert list(cat.index) == [51, 52, 60, 99]  # artists.dat order, then the unnamed
    assert cat.loc[99, "title"] == "Artist 99"  # listened to, not in artists.dat
    assert cat.loc[60, "title"] == "NA"  # a name, not a missing value
    assert cat.loc[52, "title"] == "Motörhead"
    assert cat.loc[51, "genres"] == ("new wave", "pop")
    assert cat.loc[52, "genres"] == ("metal", "rock français")
    assert cat.loc[99, "genres"] == ()
    f = ds.interactions.frame
    assert len(f) == 4 and ds.interactions.n_users == 2
    assert np.array_equal(f["weight"].to_numpy(), [100.0, 7.0, 5.0, 1.0])


def test_without_tag_files(tmp_path: Path) -> None:
    folder = _write_small(tmp_path / "lastfm")
    (folder / "tags.dat").unlink()
    ds = load_lastfm(folder)
    assert ds.catalog.frame["genres"].map(len).sum() == 0
