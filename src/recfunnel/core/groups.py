"""Item groups that several layers read: the release-year groups of the fairness stages
and of the ``mad`` metric (a reranker, the goal stage and evaluation all need them)."""

from __future__ import annotations

import numpy as np

from recfunnel.core.types import Catalog

DEFAULT_SPLIT_YEAR = 1996


def year_groups(catalog: Catalog, split_year: int = DEFAULT_SPLIT_YEAR) -> np.ndarray:
    """1 for items released in or after ``split_year``, 0 before (unknown year: 0)."""
    return (np.nan_to_num(catalog.years, nan=-1) >= split_year).astype(np.int64)
