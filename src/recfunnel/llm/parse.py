"""Parse and repair LLM output so it can only name candidates, each once.

Anything the model writes that is not a candidate is counted as invalid; what is missing
is filled from the previous stage's order, so a bad answer costs little and loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"\d+")


@dataclass
class ParsedRanking:
    """A full permutation of ``range(n)`` and what had to be repaired to get it."""

    order: list[int]
    invalid: bool
    problems: list[str] = field(default_factory=list)


def parse_permutation(text: str, n: int) -> ParsedRanking:
    """RankGPT's repair rules on '[3] > [1] > [2]'-style answers (identifiers 1..n).

    Keep the digit runs, drop out-of-range numbers and repeats (first mention wins), then
    append the missing candidates in input order. The answer is invalid if any rule fired.
    """
    problems: list[str] = []
    seen: set[int] = set()
    order: list[int] = []
    for raw in _NUMBER.findall(text):
        j = int(raw[:9]) - 1  # a 1000-digit "number" is still just out of range
        if not 0 <= j < n:
            problems.append(f"unknown id {raw[:12]}")
            continue
        if j in seen:
            problems.append(f"repeated id {j + 1}")
            continue
        seen.add(j)
        order.append(j)
    missing = [j for j in range(n) if j not in seen]
    if missing:
        problems.append(f"missing {len(missing)} of {n} ids")
    return ParsedRanking(order + missing, bool(problems), problems)
