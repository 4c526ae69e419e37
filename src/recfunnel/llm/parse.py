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


_RANKING = re.compile(r"ranking\s*:(.*)", re.IGNORECASE)
_NEXT = re.compile(r"next\s*:\s*([a-z]+)", re.IGNORECASE)


@dataclass
class GoalAnswer:
    """A goal-graph node's answer: a full ranking of ids 0..n-1 and the next node, or the
    reasons it is invalid (unknown id, repeated id, missing ids, wrong length, bad node)."""

    order: list[int] | None
    next_node: str | None
    errors: list[str]


def parse_goal_answer(text: str, n: int, nodes: tuple[str, ...]) -> GoalAnswer:
    """Strict: unlike :func:`parse_permutation` nothing is repaired, because the walker
    re-asks once with the specific error instead."""
    errors: list[str] = []
    m = _RANKING.search(text)
    ids = [int(x[:9]) for x in _NUMBER.findall(m.group(1).split("\n")[0] if m else "")]
    if not m:
        errors.append("no 'Ranking:' line")
    else:
        unknown = [i for i in ids if not 1 <= i <= n]
        if unknown:
            errors.append(f"unknown id(s) {unknown[:5]} (ids are 1..{n})")
        seen = [i for i in ids if 1 <= i <= n]
        if len(set(seen)) != len(seen):
            errors.append("repeated id(s) " + str(sorted({i for i in seen if seen.count(i) > 1})))
        missing = sorted(set(range(1, n + 1)) - set(seen))
        if missing:
            errors.append(f"missing id(s) {missing[:10]}")
        if len(ids) != n:
            errors.append(f"{len(ids)} ids instead of {n}")
    nm = _NEXT.search(text)
    node = nm.group(1).lower() if nm else None
    if node not in nodes:
        errors.append(f"unknown next node {node!r} (one of {', '.join(nodes)})" if node
                      else "no 'Next:' line")  # fmt: skip
        node = None
    order = [i - 1 for i in ids] if not errors else None
    return GoalAnswer(order, node, errors)
