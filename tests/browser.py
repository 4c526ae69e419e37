"""The browser the page and report tests drive: found, or a failure that says how to get it.

`make test` installs it first (`make test-tools`); a missing browser is a
failure in every environment, never a skip that would hide an untested page.
"""

from __future__ import annotations

import shutil

import pytest

INSTALL = "chromium is not installed: run `make test-tools` (apt-get install chromium)"


def chromium() -> str:
    names = ("chromium", "chromium-browser", "google-chrome")
    path = next((p for n in names if (p := shutil.which(n))), None)
    if path is None:
        pytest.fail(INSTALL)
    return path
