"""Where recfunnel keeps what it downloads and derives: datasets, embeddings, LLM answers.

Everything lives under the user's cache folder (platformdirs: ``~/.cache/recfunnel`` on
Linux) unless an environment variable points elsewhere:

- ``$RECFUNNEL_CACHE``: derived data (item embeddings, LLM answers, assembled models);
- ``$RECFUNNEL_DATA``: datasets, one sub-folder each (``--data-dir`` wins over it).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RECFUNNEL_CACHE"
DATA_ENV = "RECFUNNEL_DATA"
DATA_URL_ENV = "RECFUNNEL_DATA_URL"
"""A mirror's base URL that replaces each dataset publisher's (``$URL/movielens/…``)."""
OFFLINE_ENV = "RECFUNNEL_OFFLINE"
"""``1``: never download a dataset (a missing one is an error naming the folder)."""


def user_cache() -> Path:
    """The platform's per-user cache folder for recfunnel."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("recfunnel", appauthor=False))


def cache_root() -> Path:
    """recfunnel's cache folder: ``$RECFUNNEL_CACHE``, else the user's cache folder."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else user_cache()


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds one sub-folder per dataset: ``data_dir``, else
    ``$RECFUNNEL_DATA``, else ``data/`` in the user's cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return user_cache() / "data"


def offline() -> bool:
    """Whether downloads are forbidden (``$RECFUNNEL_OFFLINE`` set to 1, true or yes)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")
