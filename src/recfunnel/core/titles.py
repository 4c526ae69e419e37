"""Finding catalog titles in text: the normal form of a title and the forms a text may name
it by, and an index from those forms to catalog items.

The explanation stage's grounding check, serving's title search and chat, and the training
examples all read titles the same way, so the helper lives here, below all of them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container

from recfunnel.core.types import Catalog


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def normalize(text: str) -> str:
    """Lower-case words only: accents, punctuation and spacing do not decide a match."""
    return " ".join(re.findall(r"[a-z0-9]+", _ascii(text).lower()))


YEAR = re.compile(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$")
"""A title's trailing release year, "(1995)" or "(2005-2007)"."""
_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El|L')$", re.IGNORECASE)


def title_forms(title: str) -> set[str]:
    """How a text may name a catalog title: as listed ("Dumbo (1941)"), without its year,
    with a trailing article ("Matrix, The") moved to the front, and without any
    alternative title in brackets."""
    base = YEAR.sub("", title).strip()
    forms = {title, base, re.sub(r"\s*\(.*?\)", "", base).strip()}
    for f in list(forms):
        m = _ARTICLE.match(f)
        if m:
            forms |= {f"{m.group(2)} {m.group(1)}", m.group(1)}
    return {n for n in map(normalize, forms) if n}


class TitleIndex:
    """Finds the catalog titles a text names. Unquoted, a title counts when it has two or
    more words (its year counts: "Heat (1995)") and starts with a capital or a digit
    ("Heat", "Children" or "the others" alone would match ordinary prose); any quoted
    phrase is checked too, so a quoted title the catalog does not know counts as
    invented."""

    MAX_WORDS = 12
    """At least this many words are tried per match (more where the catalog's longest
    title form is longer, so "American Pie Presents: The Book of Love (American Pie 7: …)"
    is one title, not also "American Pie")."""

    def __init__(self, catalog: Catalog) -> None:
        self.by_form: dict[str, set[int]] = {}
        for i, title in enumerate(catalog.frame["title"].astype(str)):
            for form in title_forms(title):
                self.by_form.setdefault(form, set()).add(i)
        self.catalog = catalog
        self.max_words = max([self.MAX_WORDS, *(f.count(" ") + 1 for f in self.by_form)])

    def mentions(
        self, text: str, single_words: Container[str] | None = None
    ) -> tuple[dict[str, set[int]], list[str]]:
        """(each title form named in ``text`` → the catalog items it may mean, quoted
        phrases that are no catalog title). Longest match first, so "Star Wars: Episode IV
        - A New Hope" is one title, not also "A New Hope". ``single_words``: also accept
        capitalised one-word titles of 4+ letters except these (a user typing "Inception"
        means the film; generated prose saying "Heat" may not)."""
        raw = re.findall(r"[A-Za-z0-9]+", _ascii(text))
        words = [w.lower() for w in raw]
        found: dict[str, set[int]] = {}
        shortest = 1 if single_words is not None else 2
        a = 0
        while a < len(words):
            hit = None
            for b in range(min(a + self.max_words, len(words)), a + shortest - 1, -1):
                form = " ".join(words[a:b])
                if b == a + 1 and (len(form) < 4 or form in (single_words or ())):
                    continue
                if form in self.by_form and (raw[a][0].isupper() or raw[a][0].isdigit()):
                    hit = b
                    found[form] = self.by_form[form]
                    break
            a = hit if hit is not None else a + 1
        unknown = []
        for quoted in re.findall(r"[\"“]([^\"”]{2,80})[\"”]", text):
            form = normalize(YEAR.sub("", quoted))
            if form in self.by_form:
                found[form] = self.by_form[form]
            else:
                unknown.append(quoted.strip())
        return found, unknown

    def dated(self, text: str) -> list[tuple[str, int, set[int]]]:
        """Each "Title (YYYY)" in ``text`` whose title the catalog knows: (the title as
        written, the year written, the catalog items the title may mean). The longest
        known title ending right before the year counts ("Star Wars: Episode IV - A New
        Hope (1977)", not "A New Hope")."""
        out = []
        for m in re.finditer(r"\((\d{4})\)", text):
            raw = re.findall(r"[A-Za-z0-9]+", _ascii(text[: m.start()]))
            words = [w.lower() for w in raw]
            for n in range(min(len(words), self.max_words), 0, -1):
                form = " ".join(words[-n:])
                if form in self.by_form:
                    out.append((" ".join(raw[-n:]), int(m.group(1)), self.by_form[form]))
                    break
        return out
