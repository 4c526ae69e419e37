"""Where a dataset's files are expected (see :func:`recfunnel.core.paths.data_root`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from recfunnel.core.errors import DatasetNotFound
from recfunnel.core.paths import DATA_ENV, OFFLINE_ENV, data_root, offline


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
