"""A dataset's required files are its registry entry's to list, checked once by
load_dataset; a loader called on its own still names the file it cannot read."""

import pytest

from recfunnel.core.errors import DatasetNotFound
from recfunnel.data import load_dataset
from recfunnel.data.movielens import load_ml_latest_small
from recfunnel.data.registry import DATASETS


def test_a_loader_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.raises(DatasetNotFound, match=r"ratings\.csv does not exist"):
        load_ml_latest_small(tmp_path)


def test_load_dataset_names_every_missing_file_from_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_OFFLINE", "1")
    spec = DATASETS["lastfm-2k"]
    folder = tmp_path / spec.folder
    folder.mkdir()
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("lastfm-2k", tmp_path)
    for name in spec.files:
        assert name in str(err.value)
