"""ml-latest-small from the shared data folder, and the error when a dataset is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfunnel.core.errors import DatasetNotFound
from recfunnel.data import load_dataset


def test_ml_latest_small(shared_data: Path) -> None:
    ds = load_dataset("ml-latest-small", data_dir=shared_data)
    inter, cat = ds.interactions, ds.catalog
    assert len(inter) == 100836
    assert inter.n_users == 610
    assert len(cat) == 9742
    assert inter.frame["item"].nunique() == 9724  # 18 movies nobody rated
    assert inter.has_ratings and inter.has_timestamps and ds.timestamps_real
    assert inter.frame["rating"].between(0.5, 5.0).all()
    toy = cat.frame.set_index("item_id").loc[1]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["year"] == 1995
    assert toy["genres"] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert toy["text"].startswith("Toy Story (1995). Genres: Adventure, Animation")
    assert "Tags: pixar" in toy["text"]
    assert cat.frame["year"].notna().sum() > 9700
    assert (cat.frame["genres"].map(len) > 0).sum() > 9700


def test_missing_dataset_names_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("ml-latest-small", data_dir=tmp_path)
    msg = str(err.value)
    assert str((tmp_path / "ml-latest-small").resolve()) in msg
    assert "ratings.csv" in msg and "movies.csv" in msg
