"""Where datasets live: ``--data-dir``, then ``$RECFUNNEL_DATA``, then ``../shared/data``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from recfunnel.errors import DatasetNotFound

ENV_VAR = "RECFUNNEL_DATA"
DEV_DEFAULT = Path("../shared/data")


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds one sub-folder per dataset."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEV_DEFAULT


def dataset_dir(
    folder: str, files: Sequence[str], data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The dataset's folder, checked to hold ``files``; else a :class:`DatasetNotFound` that
    names the folder, the files expected and how to get them."""
    root = data_root(data_dir)
    path = root / folder
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise DatasetNotFound(
            f"dataset folder {path.resolve()} is missing {', '.join(missing)} "
            f"(expected files: {', '.join(files)}). Put the files there, point --data-dir or "
            f"${ENV_VAR} at the folder that contains {folder}/, or run "
            f"`recfunnel data fetch` for datasets that can be downloaded."
        )
    return path
