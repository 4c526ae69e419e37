"""Small dataset files in their original formats, for loader and fetch tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# u.data: user \t item \t rating \t timestamp (no header), as in ml-100k.
ML100K_DATA = (
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "22\t377\t1\t878887116\n"
    "196\t302\t4\t881251000\n"
    "22\t267\t2\t878887200\n"
)
# u.item: id|title|release date|video release date|IMDb URL|19 genre flags, Latin-1.
ML100K_ITEM = (
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)"
    "|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/M/title-exact?"
    "L%2EA%2E+Confidential+(1997)|0|0|0|0|0|0|1|0|0|0|1|0|0|1|0|0|1|0|0\n"
    "377|Café Noir|05-Oct-1996||http://us.imdb.com/M/title-exact?Cafe"
    "|0|0|0|0|0|1|0|0|1|0|0|0|0|0|1|0|0|0|0\n"
)


@pytest.fixture
def write_ml100k() -> Callable[[Path], Path]:
    """Write u.data and u.item (Latin-1, as GroupLens ships them) into a folder."""

    def write(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "u.data").write_text(ML100K_DATA, encoding="ascii")
        (folder / "u.item").write_bytes(ML100K_ITEM.encode("latin-1"))
        return folder

    return write
