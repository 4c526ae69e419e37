"""Amazon Games (LLMRank) loader: the real files, and small files for the checks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from recfunnel.core.errors import DatasetFormatError
from recfunnel.core.types import Dataset
from recfunnel.data import load_dataset
from recfunnel.data.amazon import load_amazon_games


@pytest.fixture(scope="module")
def games(shared_data: Path) -> Dataset:
    return load_dataset("amazon-games", data_dir=shared_data)


def test_counts(games: Dataset) -> None:
    assert games.name == "amazon-games"
    assert games.interactions.n_users == 50546
    assert len(games.catalog) == 16859
    assert len(games.interactions) == 440264
    assert games.prefiltered and not games.timestamps_real
    assert not games.interactions.has_ratings
    assert games.catalog.frame["genres"].map(len).sum() == 0
    assert games.catalog.frame["year"].isna().all()


def test_titles_unescaped(games: Dataset) -> None:
    cat = games.catalog.frame.set_index("item_id")
    assert cat.loc[0, "title"] == "Fire Emblem: The Sacred Stones"
    assert cat.loc[11, "title"] == "Phantasy Star Online, Episode I & II"
    assert cat.loc[37, "title"] == "Marvel\u2019s Spider-Man - PlayStation 4"
    assert not cat["title"].str.contains("&amp;").any()


def test_order_reproduces_sequences(games: Dataset, shared_data: Path) -> None:
    """Sorting by timestamp gives back each shipped history, then the test target."""
    with (shared_data / "amazon-games-llmrank" / "Games-6k.test.inter").open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    inter = games.interactions
    f = inter.frame.sort_values(["user", "timestamp"], kind="stable")
    last = f.groupby("user").tail(1)
    users = [inter.user_ids[u] for u in last["user"]]
    targets = dict(zip(users, games.catalog.ids_of(last["item"].to_numpy()), strict=True))
    assert targets == {int(u): int(t) for u, _, t in rows}
    # a whole sequence, for one user
    u, hist, target = rows[1]
    mine = f[f["user"] == inter.user_index(int(u))]
    assert games.catalog.ids_of(mine["item"].to_numpy()) == [int(i) for i in hist.split()] + [
        int(target)
    ]
    assert mine["timestamp"].tolist() == list(range(len(hist.split()) + 1))


def test_no_repeats_in_sequences(games: Dataset) -> None:
    """Worth knowing for protocols: no user has an item twice (nor the target in history)."""
    f = games.interactions.frame
    assert not f.duplicated(["user", "item"]).any()


ITEM = "item_id:token\ttitle:token_seq\n0\tA &amp; B\n1\tC\n2\tD &quot;E&quot;\n3\tF\n"
TEST = "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t0 1 2\t3\n8\t3 1\t0\n"
VALID = "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t0 1\t2\n8\t3\t1\n"


def _write(folder: Path, valid: str | None = VALID) -> Path:
    folder.mkdir()
    (folder / "Games-6k.item").write_text(ITEM)
    (folder / "Games-6k.test.inter").write_text(TEST)
    if valid is not None:
        (folder / "Games-6k.valid.inter").write_text(valid)
    return folder


def test_small_files(tmp_path: Path) -> None:
    ds = load_amazon_games(_write(tmp_path / "g"))
    assert ds.catalog.titles.tolist() == ["A & B", "C", 'D "E"', "F"]
    f = ds.interactions.frame
    assert len(f) == 7
    u7 = f[f["user"] == ds.interactions.user_index(7)].sort_values("timestamp")
    assert ds.catalog.ids_of(u7["item"].to_numpy()) == [0, 1, 2, 3]
    assert np.array_equal(u7["timestamp"].to_numpy(), [0.0, 1.0, 2.0, 3.0])


def test_without_valid_file(tmp_path: Path) -> None:
    assert len(load_amazon_games(_write(tmp_path / "g", valid=None)).interactions) == 7


@pytest.mark.parametrize(
    "valid",
    [
        "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t0 1\t3\n8\t3\t1\n",  # target
        "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t1 0\t2\n8\t3\t1\n",  # order
        "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t0 1\t2\n",  # a user lacks
        "user_id:token\titem_id_list:token_seq\titem_id:token\n7\t0 1\t2\n9\t3\t1\n",  # user id
    ],
)
def test_valid_file_must_agree(tmp_path: Path, valid: str) -> None:
    with pytest.raises(DatasetFormatError, match=r"valid\.inter"):
        load_amazon_games(_write(tmp_path / "g", valid=valid))


def test_unknown_item(tmp_path: Path) -> None:
    folder = _write(tmp_path / "g", valid=None)
    (folder / "Games-6k.test.inter").write_text(TEST + "9\t1\t42\n")
    with pytest.raises(DatasetFormatError, match="42"):
        load_amazon_games(folder)
