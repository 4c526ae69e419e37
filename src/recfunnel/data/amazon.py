"""Amazon Video Games as processed for LLMRank (``amazon-games-llmrank``, RecBole atomic files).

``Games-6k.item`` has ``item_id:token`` and ``title:token_seq`` (titles HTML-escaped, e.g.
'&amp;'); ``Games-6k.test.inter`` has ``user_id:token``, ``item_id_list:token_seq`` (the
history, space-separated, oldest first) and ``item_id:token`` (the held-out last item).
There are no ratings and no times: the order of a user's items is all we know, so each
event's timestamp is its position in the user's sequence (0, 1, 2, ...), the target last.
The files are already filtered and split by their publishers.
"""

from __future__ import annotations

import csv
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.core.errors import DatasetFormatError
from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data._io import read_table, require_columns

log = logging.getLogger(__name__)

NAME = "amazon-games"  # the registry's name for it
PREFIX = "Games-6k"


def read_atomic(file: Path) -> pd.DataFrame:
    """A RecBole atomic file, with the ``:type`` suffixes dropped from the column names."""
    frame = read_table(file, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    frame.columns = pd.Index([str(c).split(":")[0] for c in frame.columns])
    return frame


def _as_ids(tokens: pd.Series) -> pd.Series:
    """RecBole tokens as int64 ids when they all are integers (they are here), else as is."""
    numeric = pd.to_numeric(tokens, errors="coerce")
    if numeric.notna().all() and (numeric % 1 == 0).all():
        return numeric.astype(np.int64)
    return tokens


def _sequences(file: Path) -> pd.DataFrame:
    """One row per event: user, item, position; the target follows the history."""
    inter = read_atomic(file)
    require_columns(inter, ("user_id", "item_id_list", "item_id"), file)
    if inter["user_id"].duplicated().any():
        dup = inter.loc[inter["user_id"].duplicated(), "user_id"].iloc[0]
        raise DatasetFormatError(f"{file}: user {dup} has more than one row")
    full = (inter["item_id_list"].str.strip() + " " + inter["item_id"].str.strip()).str.strip()
    events = (
        pd.DataFrame({"user": inter["user_id"], "item": full.str.split()})
        .explode("item", ignore_index=True)
        .dropna(subset=["item"])
    )
    events["pos"] = events.groupby("user", sort=False).cumcount()
    return events


def _check_valid(valid_file: Path, events: pd.DataFrame) -> None:
    """The valid file must be the test sequences minus their last item, user for user.

    Both are compared as (user, position, item) triples, so a shifted, reordered or
    different sequence in either file shows up as a mismatch.
    """
    valid = _sequences(valid_file)
    last = events.groupby("user", sort=False)["pos"].transform("max")
    expected = events.loc[events["pos"] < last, ["user", "pos", "item"]]
    got = valid[["user", "pos", "item"]]
    if len(expected) != len(got):
        raise DatasetFormatError(
            f"{valid_file} has {len(got)} events, the test file implies {len(expected)}"
        )
    merged = got.merge(expected, on=["user", "pos"], how="left", suffixes=("", "_test"))
    bad = merged["item"] != merged["item_test"]
    if bad.any():
        row = merged[bad].iloc[0]
        raise DatasetFormatError(
            f"{valid_file} disagrees with the test file: user {row['user']} position "
            f"{row['pos']} is item {row['item']} there, {row['item_test']} in the test file"
        )


def load_amazon_games(path: Path) -> Dataset:
    """Load the LLMRank Games-6k files as ordered implicit sequences (see module doc)."""
    item_file, test_file = path / f"{PREFIX}.item", path / f"{PREFIX}.test.inter"
    items = read_atomic(item_file)
    require_columns(items, ("item_id", "title"), item_file)
    catalog = Catalog.build(
        item_ids=_as_ids(items["item_id"]).to_numpy(),
        titles=[html.unescape(t).strip() for t in items["title"]],
    )

    events = _sequences(test_file)
    valid_file = path / f"{PREFIX}.valid.inter"
    if valid_file.is_file():
        _check_valid(valid_file, events)
    item_idx = pd.Index(catalog.frame["item_id"]).get_indexer(_as_ids(events["item"]))
    if (item_idx < 0).any():
        bad = events["item"].to_numpy()[item_idx < 0][0]
        raise DatasetFormatError(f"{test_file}: item {bad} is not in {item_file.name}")
    interactions = Interactions.build(
        users=_as_ids(events["user"]).to_numpy(),
        items=item_idx,
        n_items=len(catalog),
        timestamp=events["pos"].to_numpy(dtype=np.float64),
    )
    return Dataset(NAME, interactions, catalog, timestamps_real=False, prefiltered=True)
