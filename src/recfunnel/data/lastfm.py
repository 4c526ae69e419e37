"""HetRec 2011 Last.fm (``hetrec2011-lastfm-2k``): who listened to which artist how often.

Feedback is implicit: the weight of a user–artist pair is its listening count, there are no
ratings and no listening times (the tag timestamps are about tagging, not listening). Item
text comes from the artist name and the tags users gave the artist: the 3 most used tags
stand in for genres, and the text lists the 5 most used tags once (genres 1-3, tags 4-5).

Files as published (see the folder's readme.txt): tab-separated with a header row;
``user_artists.dat`` (userID, artistID, weight) ASCII with CRLF; ``artists.dat`` (id, name,
url, pictureURL) UTF-8; ``tags.dat`` (tagID, tagValue) Latin-1 with CRLF;
``user_taggedartists.dat`` (userID, artistID, tagID, day, month, year).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.core.types import Catalog, Dataset, Interactions
from recfunnel.data._io import read_table, require_columns
from recfunnel.data.movielens import top_tags

log = logging.getLogger(__name__)

NAME = "lastfm-2k"  # the registry's name for it
N_GENRES = 3
N_TAGS = 5

# Names such as 'NA' or 'Null' are real artists, and names may hold quote characters.
_TEXT = {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}


def _artist_tags(path: Path) -> dict[int, list[str]]:
    """Each artist's tags, most used first (ties by name); empty without the tag files."""
    if not ((path / "user_taggedartists.dat").is_file() and (path / "tags.dat").is_file()):
        log.info("%s: no tag files, artists get no tags", path)
        return {}
    assigned = read_table(path / "user_taggedartists.dat", sep="\t", usecols=["artistID", "tagID"])
    names = read_table(path / "tags.dat", encoding="latin-1", dtype={"tagValue": str}, **_TEXT)
    require_columns(names, ("tagID", "tagValue"), path / "tags.dat")
    tag_of = pd.Series(names["tagValue"].to_numpy(), index=names["tagID"].astype(np.int64))
    tagged = pd.DataFrame(
        {"artistID": assigned["artistID"], "tag": assigned["tagID"].map(tag_of)}
    ).dropna()
    return top_tags(tagged, max_tags=N_TAGS, key="artistID")


def load_lastfm(path: Path) -> Dataset:
    """Listening counts as weighted implicit feedback, artists (named or not) as the catalog."""
    plays = read_table(path / "user_artists.dat", sep="\t", dtype=np.int64)
    require_columns(plays, ("userID", "artistID", "weight"), path / "user_artists.dat")
    artists = read_table(path / "artists.dat", encoding="utf-8", dtype={"name": str}, **_TEXT)
    require_columns(artists, ("id", "name"), path / "artists.dat")
    artists = artists.drop_duplicates("id")

    ids = artists["id"].astype(np.int64).to_numpy()
    names = artists["name"].str.strip().to_numpy(dtype=object)
    unnamed = np.setdiff1d(plays["artistID"].unique(), ids)
    if len(unnamed):
        log.warning("%s: %d listened artists missing from artists.dat", path, len(unnamed))
        ids = np.concatenate([ids, unnamed])
        names = np.concatenate([names, np.array([f"Artist {a}" for a in unnamed], dtype=object)])
    names = np.where(names == "", [f"Artist {a}" for a in ids], names)

    tags = _artist_tags(path)
    artist_tags = [tags.get(int(a), []) for a in ids]
    catalog = Catalog.build(
        item_ids=ids,
        titles=names.tolist(),
        genres=[t[:N_GENRES] for t in artist_tags],
        # The text shows genres and tags; tags repeating the genres would only cost tokens.
        tags=[t[N_GENRES:N_TAGS] for t in artist_tags],
    )
    items = pd.Index(ids).get_indexer(pd.Index(plays["artistID"]))
    interactions = Interactions.build(
        users=plays["userID"].to_numpy(),
        items=items,
        n_items=len(catalog),
        weight=plays["weight"].to_numpy(dtype=np.float64),
    )
    return Dataset(NAME, interactions, catalog, timestamps_real=False)
