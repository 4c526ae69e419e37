"""Fixtures shared by all test folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One cache for the whole suite, kept between runs in the checkout (git-ignored): item
# embeddings and the de-quantized model are computed once, not once per test module.
os.environ.setdefault("RECFUNNEL_CACHE", str(REPO / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets: $RECFUNNEL_DATA, else <repo>/../shared/data.

    Fails rather than skips: tests on real data are part of the suite, and a silent skip
    would hide that they never ran.
    """
    root = Path(os.environ.get("RECFUNNEL_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.fail(
            f"shared data folder {root} is missing: set RECFUNNEL_DATA to the folder that "
            "holds ml-latest-small/, hetrec2011-lastfm-2k/ and amazon-games-llmrank/"
        )
    return root
