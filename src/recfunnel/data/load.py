"""Load a named dataset, fetching it on first use."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from recfunnel.core.errors import ChecksumMismatch, ConfigError, DatasetNotFound, DownloadError
from recfunnel.core.paths import DATA_ENV, DATA_URL_ENV, OFFLINE_ENV, data_root, offline
from recfunnel.core.types import Dataset
from recfunnel.data.fetch import fetch
from recfunnel.data.registry import DATASETS


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a named dataset from the data folder (``data_dir``, else ``$RECFUNNEL_DATA``,
    else the user's cache). A dataset that can be downloaded and is missing is fetched
    first, verified and unpacked, unless downloads are off (``$RECFUNNEL_OFFLINE=1``)."""
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    folder = data_root(data_dir) / spec.folder
    if spec.archive is not None and missing_files(folder, spec.files) and not offline():
        try:
            fetch(name, data_dir)
        except (DownloadError, ChecksumMismatch) as exc:
            raise type(exc)(
                f"{name} is not in {folder} and downloading it failed: {exc}. Put "
                f"{', '.join(spec.files)} there, or point ${DATA_URL_ENV} at a mirror that "
                f"holds {spec.archive.path} (and its .md5)."
            ) from exc
    path = dataset_dir(spec.folder, spec.files, data_dir)
    data = spec.load_fn()(path)
    catalog = dataclasses.replace(data.catalog, noun=spec.noun)
    return dataclasses.replace(data, name=spec.name, catalog=catalog)


def missing_files(folder: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def dataset_dir(
    folder: str, files: Sequence[str], data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The dataset's folder, checked to hold ``files``; else a :class:`DatasetNotFound` that
    names the folder, the files expected and how to get them."""
    path = data_root(data_dir) / folder
    missing = missing_files(path, files)
    if missing:
        off = f" Downloads are off (${OFFLINE_ENV})." if offline() else ""
        raise DatasetNotFound(
            f"dataset folder {path.resolve()} is missing {', '.join(missing)} "
            f"(expected files: {', '.join(files)}). Put the files there, or point --data-dir "
            f"or ${DATA_ENV} at the folder that contains {folder}/.{off}"
        )
    return path
