"""Datasets, loaders and evaluation protocols."""

from recfunnel.data.load import load_dataset
from recfunnel.data.registry import DATASETS
from recfunnel.data.splits import cold_start, leave_last_out, make_split

__all__ = ["DATASETS", "cold_start", "leave_last_out", "load_dataset", "make_split"]
