"""Training lists for a fine-tuned reranker, built from the training split only.

Each list is one user's history up to an item of their *training* sequence (the target),
the retriever's best other candidates, and the target, shown in several shuffled orders
(bootstrapping: the target lands at a different letter each time, so the model cannot
learn "answer A"). The prompt is the verbalizer's own, so what is trained is what is
evaluated. The answer is the target's letter, then a reason grounded in the history.

Preference pairs for DPO keep that answer as *chosen*; *rejected* is the position-biased
answer (the first listed candidate, as an input-order-keeping model says) or, when the
target happens to be listed first, the right letter with an ungrounded reason (a title
the user never saw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from recfunnel.data.splits import ordered_events
from recfunnel.errors import ConfigError
from recfunnel.explain import template_reason
from recfunnel.llm.base import Message
from recfunnel.llm.prompts import PromptStyle, verbalizer_prompt
from recfunnel.retrieve.base import Retriever
from recfunnel.types import PAD, Catalog, Request, Split


@dataclass
class Example:
    """One presented list and its answers."""

    user: int
    history: np.ndarray
    target: int
    candidates: list[int]
    """In presented order; the target is among them."""
    shuffle: int
    messages: list[Message]
    labels: list[str]
    chosen: str
    rejected: str
    rejected_kind: Literal["position", "ungrounded"]

    @property
    def target_label(self) -> str:
        return self.labels[self.candidates.index(self.target)]


def held_out(split: Split) -> dict[int, set[int]]:
    """Each user's validation and test targets: never a training target, never a negative."""
    out: dict[int, set[int]] = {}
    for evalset in (split.valid, split.test):
        if evalset is None:
            continue
        for req, truth in zip(evalset.requests, evalset.truth, strict=True):
            if req.user is not None:
                out.setdefault(int(req.user), set()).update(int(i) for i in truth)
    return out


def _sequences(split: Split, min_history: int, seed: int) -> dict[int, np.ndarray]:
    """Training items per user in the split's own order (time, ties by item), users with
    enough history."""
    events = ordered_events(split.train, seed)
    g = events.groupby("user")["item"]
    return {int(u): s.to_numpy() for u, s in g if len(s) > min_history}  # type: ignore[arg-type]


def _shuffles(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` distinct permutations of ``n`` (all of them when n! < k)."""
    seen: set[tuple[int, ...]] = set()
    out: list[np.ndarray] = []
    limit = math.factorial(n) if n < 12 else k
    while len(out) < min(k, limit):
        p = rng.permutation(n)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


def build_examples(
    split: Split,
    catalog: Catalog,
    retriever: Retriever,
    *,
    n_lists: int,
    shuffles: int,
    candidates: int,
    style: PromptStyle,
    seed: int = 0,
    min_history: int = 3,
) -> list[Example]:
    """``n_lists`` users × ``shuffles`` orders. ``retriever`` must be fitted on
    ``split.train``; a user's held-out (validation, test) items are never used."""
    if candidates < 2:
        raise ConfigError("a training list needs at least 2 candidates")
    rng = np.random.default_rng(seed)
    seqs = _sequences(split, min_history, seed)
    if not seqs:
        raise ConfigError(f"no training user has more than {min_history} items")
    users = np.array(sorted(seqs))
    users = users[rng.permutation(len(users))[:n_lists]]
    held = held_out(split)
    titles = catalog.frame["title"].astype(str).to_numpy()
    reqs = [Request(int(u), seqs[int(u)][:-1]) for u in users]
    pools = retriever.retrieve(reqs, candidates + 50)
    out: list[Example] = []
    for r, u in enumerate(users):
        seq, req = seqs[int(u)], reqs[r]
        target = int(seq[-1])
        banned = held.get(int(u), set()) | {target}
        negs = [int(i) for i in pools.items[r] if i != PAD and int(i) not in banned]
        if len(negs) < candidates - 1:
            continue  # too few candidates for this user: skip, never pad with held items
        listed = np.array([*negs[: candidates - 1], target])
        for s, perm in enumerate(_shuffles(candidates, shuffles, rng)):
            cands = [int(i) for i in listed[perm]]
            msgs, labels = verbalizer_prompt(catalog, req.history, cands, style)
            label = labels[cands.index(target)]
            chosen = f"{label}\n{template_reason(catalog, target, req.history)}"
            if cands[0] != target:
                rejected = f"{labels[0]}\n{template_reason(catalog, cands[0], req.history)}"
                kind: Literal["position", "ungrounded"] = "position"
            else:
                allowed = {*cands, *(int(i) for i in req.history)}
                other = next(int(i) for i in rng.permutation(len(titles)) if int(i) not in allowed)
                rejected = f"{label}\nBecause you liked {titles[other]}, you will like it."
                kind = "ungrounded"
            out.append(
                Example(int(u), req.history, target, cands, s, msgs, labels, chosen, rejected, kind)
            )
    return out


def sft_rows(examples: Sequence[Example], render: Any) -> pd.DataFrame:
    """Prompt-completion rows; ``render`` turns messages into the exact text the model sees
    at inference (its chat template with the assistant turn opened)."""
    return pd.DataFrame(
        {
            "prompt": [render(e.messages) for e in examples],
            "completion": [e.chosen for e in examples],
        }
    )


def dpo_rows(examples: Sequence[Example], render: Any) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [render(e.messages) for e in examples],
            "chosen": [e.chosen for e in examples],
            "rejected": [e.rejected for e in examples],
        }
    )
