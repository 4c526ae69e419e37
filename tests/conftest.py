"""Fixtures shared by all test folders."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One cache for the whole suite, kept between runs in the checkout (git-ignored): item
# embeddings and the de-quantized model are computed once, not once per test module.
os.environ.setdefault("RECFUNNEL_CACHE", str(REPO / ".cache"))
# LLM answers are not kept: each run asks the real model afresh, in a new answer cache
# (a test that passed by replaying old answers would say nothing about today's code).
_ANSWERS = Path(tempfile.mkdtemp(prefix="recfunnel-answers-"))
os.environ["RECFUNNEL_ANSWERS"] = str(_ANSWERS / "answers.sqlite")
atexit.register(shutil.rmtree, _ANSWERS, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No test downloads a dataset from the internet; the fetch tests serve their own archives on
# loopback and lift this themselves.
os.environ["RECFUNNEL_OFFLINE"] = "1"


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


@pytest.fixture(autouse=True)
def _loud_by_default():
    """`--quiet` sets RECFUNNEL_QUIET for the rest of its process (the workers it starts
    inherit it): a CLI test run in-process must not silence the notices later tests read."""
    from recfunnel.core.progress import set_quiet

    set_quiet(False)
    yield
    set_quiet(False)
