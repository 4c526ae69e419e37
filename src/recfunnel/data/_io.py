"""Reading dataset files with errors that name the file, shared by the loaders. Which
files a named dataset needs is its registry entry's to say (checked once, by
:func:`recfunnel.data.load.load_dataset`); a loader only reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from recfunnel.core.errors import DatasetFormatError, DatasetNotFound


def read_table(file: Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose failures say which file is missing or malformed."""
    if not file.is_file():
        raise DatasetNotFound(f"{file.resolve()} does not exist")
    try:
        return pd.read_csv(file, **kwargs)
    except ValueError as exc:  # includes ParserError, EmptyDataError, UnicodeDecodeError
        raise DatasetFormatError(f"{file}: cannot parse ({exc})") from exc


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str], file: Path) -> None:
    """Fail early, naming the columns that are missing and the ones that are there."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetFormatError(
            f"{file}: missing column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(repr, map(str, frame.columns)))}"
        )
