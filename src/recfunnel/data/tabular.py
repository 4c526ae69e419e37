"""Any interactions table (CSV, TSV or Parquet) plus an optional item catalog, as a Dataset.

This is the way in for data that has no dedicated loader: name the columns, and whatever
optional column is absent (rating, timestamp, title, ...) is simply treated as unknown.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from recfunnel.core.config import Strict
from recfunnel.core.errors import DatasetFormatError, DatasetNotFound
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data._io import require_columns

log = logging.getLogger(__name__)

_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip"}
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}


def read_any(file: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a table by its extension: .csv, .tsv/.tab (optionally compressed) or .parquet."""
    path = Path(file)
    if not path.is_file():
        raise DatasetNotFound(f"{path.resolve()} does not exist")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind in _PARQUET:
            return pd.read_parquet(path)
        if kind in _SEPARATORS:
            return pd.read_csv(path, sep=_SEPARATORS[kind])
    except (ValueError, OSError) as exc:  # pyarrow's errors derive from these
        raise DatasetFormatError(f"{path}: cannot read as {kind[1:]} ({exc})") from exc
    raise DatasetFormatError(
        f"{path}: unknown table format {kind or '(no extension)'!r}; "
        "use .csv, .tsv, .tab or .parquet (csv/tsv may end in .gz, .bz2, .xz, .zst or .zip)"
    )


def _ids(values: pd.Series) -> pd.Series:
    """Ids (no missing ones) as int64 when they are whole numbers, else as strings, so that
    the interactions and the catalog file agree on the type."""
    if is_numeric_dtype(values) and not is_bool_dtype(values) and (values % 1 == 0).all():
        return values.astype(np.int64)
    return values.astype(str)


def _seconds(values: pd.Series, file: Path, col: str) -> np.ndarray:
    """Timestamps as float seconds: numbers pass through, dates are read as UTC."""
    if is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    if is_datetime64_any_dtype(values):
        stamps = values
    else:
        try:
            stamps = pd.to_datetime(values, utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise DatasetFormatError(
                f"{file}: column {col!r} is neither numbers nor dates"
            ) from exc
    if getattr(stamps.dt, "tz", None) is None:
        stamps = stamps.dt.tz_localize("UTC")
    epoch = pd.Timestamp(0, tz="UTC")
    seconds = (stamps - epoch).dt.total_seconds()
    return seconds.to_numpy(dtype=np.float64, na_value=np.nan)


def _genres(values: pd.Series, sep: str) -> list[tuple[str, ...]]:
    """Genres from 'A|B' strings or from list cells (Parquet), empty where missing."""
    out: list[tuple[str, ...]] = []
    for v in values:
        if isinstance(v, str):
            out.append(tuple(g.strip() for g in v.split(sep) if g.strip()))
        elif isinstance(v, list | tuple | np.ndarray):
            out.append(tuple(str(g) for g in v))
        else:
            out.append(())
    return out


def _optional(frame: pd.DataFrame, col: str | None) -> pd.Series | None:
    if col is None or col not in frame.columns:
        return None
    return frame[col]


def _catalog(
    items: pd.DataFrame | None,
    items_file: Path | None,
    used_ids: pd.Series,
    *,
    item_col: str,
    title_col: str,
    genres_col: str,
    genre_sep: str,
    year_col: str,
) -> Catalog:
    """Catalog rows first (file order), then interacted items the catalog lacks."""
    if items is None or items_file is None:
        known = pd.DataFrame({item_col: pd.Series([], dtype=used_ids.dtype)})
    else:
        require_columns(items, [item_col], items_file)
        no_id = items[item_col].isna()
        if no_id.any():
            log.warning("%s: skipping %d rows without an item id", items_file, no_id.sum())
        known = items[~no_id].reset_index(drop=True)
        known = known.assign(**{item_col: _ids(known[item_col])})
        dup = known[item_col].duplicated()
        if dup.any():
            raise DatasetFormatError(
                f"{items_file}: item {known.loc[dup, item_col].tolist()[0]!r} has more than one row"
            )
        if is_numeric_dtype(known[item_col]) != is_numeric_dtype(used_ids):
            # One file has numeric ids and the other text ids: compare them as text.
            known = known.assign(**{item_col: known[item_col].astype(str)})
            used_ids = used_ids.astype(str)
    extra = pd.unique(used_ids[~used_ids.isin(known[item_col])])
    if len(extra) and items is not None:
        log.warning("%d interacted items are not in %s; titled by id", len(extra), items_file)
    ids = pd.concat([known[item_col], pd.Series(extra, dtype=known[item_col].dtype)])
    n_known = len(known)

    titles_raw = _optional(known, title_col)
    given = titles_raw.tolist() if titles_raw is not None else [None] * n_known
    titles = [
        str(t).strip() if pd.notna(t) and str(t).strip() else str(i)
        for t, i in zip(given, known[item_col], strict=True)
    ] + [str(i) for i in extra]
    genres_raw = _optional(known, genres_col)
    genres = _genres(genres_raw, genre_sep) if genres_raw is not None else [()] * n_known
    years_raw = _optional(known, year_col)
    years: list[Any] = (
        pd.to_numeric(years_raw, errors="coerce").round().astype("Int64").tolist()
        if years_raw is not None
        else [None] * n_known
    )
    return Catalog.build(
        item_ids=ids.tolist(),
        titles=titles,
        genres=genres + [()] * len(extra),
        years=years + [None] * len(extra),
    )


def drop_duplicate_events(frame: pd.DataFrame, columns: list[str], file: Path) -> pd.DataFrame:
    """The rule for duplicate rows: rows equal in every column read (user, item and, where
    present, rating, timestamp and weight) are one event written twice, kept once (the
    first), with a warning; the same user and item at another time or with another rating
    are separate events and all kept."""
    dup = frame.duplicated(subset=columns, keep="first")
    if not dup.any():
        return frame
    log.warning(
        "%s: %d duplicate rows (equal in %s) dropped; each event is kept once",
        file, int(dup.sum()), ", ".join(columns),
    )  # fmt: skip
    return frame[~dup].reset_index(drop=True)


def load_tabular(
    interactions: str | os.PathLike[str],
    items: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str = "rating",
    timestamp_col: str = "timestamp",
    weight_col: str | None = None,
    title_col: str = "title",
    genres_col: str = "genres",
    genre_sep: str = "|",
    year_col: str = "year",
) -> Dataset:
    """Load interactions (one row per event) and an optional catalog from table files.

    ``user_col`` and ``item_col`` are required (in the catalog file too); the rating,
    timestamp, title, genres and year columns are used when present. ``weight_col`` is
    opt-in, so naming one that is absent is an error. Items with interactions but no catalog
    row are titled by their id. Timestamps may be numbers or dates (read as UTC seconds).
    Rows equal in every column read are one event, kept once (:func:`drop_duplicate_events`);
    a file without rows is an error.
    """
    inter_file = Path(interactions)
    frame = read_any(inter_file)
    if frame.empty:
        raise DatasetFormatError(f"{inter_file}: no rows (the file holds only a header)"
                                 if len(frame.columns) else f"{inter_file}: no rows")  # fmt: skip
    require_columns(frame, [user_col, item_col], inter_file)
    if weight_col is not None:
        require_columns(frame, [weight_col], inter_file)
    missing_ids = frame[user_col].isna() | frame[item_col].isna()
    if missing_ids.any():
        log.warning("%s: dropping %d rows without a user or item", inter_file, missing_ids.sum())
        frame = frame[~missing_ids].reset_index(drop=True)
    if frame.empty:
        raise DatasetFormatError(f"{inter_file}: no rows with both a user and an item")
    frame = drop_duplicate_events(
        frame, [c for c in (user_col, item_col, rating_col, timestamp_col, weight_col)
                if c is not None and c in frame.columns], inter_file,
    )  # fmt: skip

    items_file = Path(items) if items is not None else None
    item_frame = read_any(items_file) if items_file is not None else None
    used = _ids(frame[item_col])
    catalog = _catalog(
        item_frame,
        items_file,
        used,
        item_col=item_col,
        title_col=title_col,
        genres_col=genres_col,
        genre_sep=genre_sep,
        year_col=year_col,
    )
    item_ids = catalog.frame["item_id"]
    if not is_numeric_dtype(item_ids):
        used = used.astype(str)
    item_idx = pd.Index(item_ids).get_indexer(used)

    rating = _optional(frame, rating_col)
    stamp = _optional(frame, timestamp_col)
    weight = _optional(frame, weight_col)
    if rating is not None and not is_numeric_dtype(rating):
        raise DatasetFormatError(f"{inter_file}: column {rating_col!r} is not numeric")
    if weight is not None and not is_numeric_dtype(weight):
        raise DatasetFormatError(f"{inter_file}: column {weight_col!r} is not numeric")
    data = Interactions.build(
        users=_ids(frame[user_col]).to_numpy(),
        items=item_idx,
        n_items=len(catalog),
        rating=None if rating is None else rating.to_numpy(dtype=np.float64, na_value=np.nan),
        timestamp=None if stamp is None else _seconds(stamp, inter_file, timestamp_col),
        weight=None if weight is None else weight.to_numpy(dtype=np.float64, na_value=np.nan),
    )
    has_times = stamp is not None and bool(np.isfinite(data.frame["timestamp"]).all())
    return Dataset(
        name=name or inter_file.name.split(".")[0],
        interactions=data,
        catalog=catalog,
        timestamps_real=has_times,
        meta={"source": str(inter_file), "items_source": items_file and str(items_file)},
    )


class TabularDatasetConfig(Strict):
    """Any interactions file (CSV/TSV/Parquet) plus an optional item catalog file."""

    interactions: str
    items: str | None = None
    name: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str = "rating"
    timestamp_col: str = "timestamp"
    weight_col: str | None = None
    title_col: str = "title"
    genres_col: str = "genres"
    genre_sep: str = "|"
    year_col: str = "year"

    def load(self) -> Dataset:
        return load_tabular(
            self.interactions, self.items, name=self.name, user_col=self.user_col,
            item_col=self.item_col, rating_col=self.rating_col,
            timestamp_col=self.timestamp_col, weight_col=self.weight_col,
            title_col=self.title_col, genres_col=self.genres_col, genre_sep=self.genre_sep,
            year_col=self.year_col,
        )  # fmt: skip
