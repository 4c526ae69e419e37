"""Fixtures: ml-latest-small, and one scripted-LLM service per test module."""

from __future__ import annotations

import pytest

from recfunnel.data.load import load_dataset
from serving import make_service


@pytest.fixture(scope="session")
def movielens(shared_data):
    return load_dataset("ml-latest-small", shared_data)


@pytest.fixture(scope="module")
def service(movielens):
    svc = make_service(movielens)
    yield svc
    svc.close()
