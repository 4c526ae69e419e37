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

from recfunnel.core.candidates import PAD
from recfunnel.core.errors import ConfigError, LeakageError
from recfunnel.core.types import Catalog, Request, Split
from recfunnel.data.splits import ordered_events
from recfunnel.llm.base import Message
from recfunnel.stages.explain.grounded import template_reason
from recfunnel.stages.rerank.prompts import verbalizer_prompt
from recfunnel.stages.retrieve.base import Retriever
from recfunnel.stages.text import PromptStyle


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
    """"position": a wrong letter (the first listed, or a random one); "ungrounded": the
    right letter with a reason naming a title the user never saw."""
    positives: list[int]
    """Every listed item the user went on to like (the target is one of them)."""
    cut: int | None = None
    """The history cut this list was built at (None: LlamaRec's last-item shape)."""

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


def _sequences(
    split: Split, min_history: int, seed: int, relevance: float | None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per user with enough history: training items in the split's own order (time, ties by
    item) and whether each counts as liked (rating >= ``relevance``; all without ratings)."""
    events = ordered_events(split.train, seed, split.timestamps_real)
    liked = np.ones(len(events), dtype=bool)
    if relevance is not None and split.train.has_ratings:
        liked = events["rating"].to_numpy() >= relevance
    events = events.assign(liked=liked)
    groups = events.groupby("user")
    return {
        int(u): (g["item"].to_numpy(), g["liked"].to_numpy())  # type: ignore[arg-type]
        for u, g in groups
        if len(g) > min_history
    }


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
    history_cut: int | Sequence[int] | None = None,
    relevance: float | None = 4.0,
    rejected: Literal["first", "random"] = "first",
    held: dict[int, set[int]] | None = None,
) -> list[Example]:
    """``n_lists`` lists × ``shuffles`` orders. ``retriever`` must be fitted on
    ``split.train``; a user's held-out (validation, test) items are never used.

    Two shapes of list:

    - ``history_cut=None`` (LlamaRec's next item): history = all training items but the
      last, the target = the last; the candidates are the retriever's best others plus the
      target. With ``style.show_prev_rank`` the list is instead the retriever's own top
      ``candidates`` (so every shown rank is true) and users whose target is not in it are
      skipped.
    - ``history_cut=n`` (the cold-start protocol): history = the user's first ``n`` items,
      the list = the retriever's top ``candidates`` for that history, the positives = the
      user's later liked items in it (users with none are skipped); each shuffle's target
      is another positive where there are several. Several cuts (``[5, 10, 20]``) give each
      user one list per cut their sequence is long enough for: more lists from the few
      users a cold-start split leaves for training.

    ``held`` (default: the split's validation and test items per user) are never used;
    pass the union over every split the adapter will be evaluated on.

    ``rejected`` picks the DPO's losing answer: ``"first"`` = the first listed candidate
    (the input-order-keeping answer), ``"random"`` = a random non-positive candidate; a
    right letter with an ungrounded reason when no such candidate exists.
    """
    if candidates < 2:
        raise ConfigError("a training list needs at least 2 candidates")
    cuts: list[int | None] = (
        [None] if history_cut is None
        else [history_cut] if isinstance(history_cut, int) else list(history_cut)
    )  # fmt: skip
    if not cuts or any(c is not None and c < 1 for c in cuts):
        raise ConfigError(
            f"examples.history_cut must be >= 1 (or a list of such), got {history_cut}"
        )
    rng = np.random.default_rng(seed)
    least = min((c for c in cuts if c is not None), default=0)
    seqs = _sequences(split, max(min_history, least), seed, relevance)
    if not seqs:
        raise ConfigError(f"no training user has more than {max(min_history, least)} items")
    users = np.array(sorted(seqs))
    users = users[rng.permutation(len(users))]
    if history_cut is None and not style.show_prev_rank:
        users = users[:n_lists]  # every user yields a list: no need to look further
    own = held_out(split)
    held = own if held is None else held
    titles = catalog.frame["title"].astype(str).to_numpy()
    pairs = [(int(u), c) for u in users for c in cuts if c is None or len(seqs[int(u)][0]) > c]
    reqs = [Request(u, seqs[u][0][:-1] if c is None else seqs[u][0][:c]) for u, c in pairs]
    pools = retriever.retrieve(reqs, candidates + 50)
    out: list[Example] = []
    lists = 0
    for r, (u, cut) in enumerate(pairs):
        if lists == n_lists:
            break
        (seq, liked), req = seqs[u], reqs[r]
        later = seq[-1:] if cut is None else seq[cut:][liked[cut:]]
        positives = {int(i) for i in later} - {int(i) for i in req.history}
        banned = held.get(int(u), set())
        ranked = [int(i) for i in pools.items[r] if i != PAD and int(i) not in banned]
        if cut is None and not style.show_prev_rank:  # the target joins the best others
            target = int(seq[-1])
            negs = [i for i in ranked if i != target]
            if len(negs) < candidates - 1:
                continue  # too few candidates for this user: skip, never pad with held items
            listed = [*negs[: candidates - 1], target]
        else:  # the retriever's own top list: its ranks are true
            listed = ranked[:candidates]
        refuse_held(int(u), req.history, listed, own.get(int(u), set()))
        if banned & {*map(int, req.history), *listed}:
            continue  # another evaluated split holds out some of this user's items
        hits = [i for i in listed if i in positives]
        if len(listed) < candidates or not hits:
            continue
        lists += 1
        ranks = np.arange(candidates)
        targets = [hits[j] for j in rng.permutation(len(hits))]
        for s, perm in enumerate(_shuffles(candidates, shuffles, rng)):
            cands = [listed[j] for j in perm]
            msgs, labels = verbalizer_prompt(catalog, req.history, cands, style, ranks[perm])
            target = targets[s % len(targets)]
            label = labels[cands.index(target)]
            chosen = f"{label}\n{template_reason(catalog, target, req.history)}"
            if rejected == "first":
                pick = 0 if cands[0] not in positives else None
            else:
                wrong = [j for j, i in enumerate(cands) if i not in positives]
                pick = int(rng.choice(wrong)) if wrong else None
            if pick is not None:
                lose = cands[pick]
                bad = f"{labels[pick]}\n{template_reason(catalog, lose, req.history)}"
                kind: Literal["position", "ungrounded"] = "position"
            else:
                allowed = {*cands, *(int(i) for i in req.history)}
                other = next(int(i) for i in rng.permutation(len(titles)) if int(i) not in allowed)
                bad = f"{label}\nBecause you liked {titles[other]}, you will like it."
                kind = "ungrounded"
            shown = sorted(positives & set(cands))
            out.append(
                Example(
                    u, req.history, target, cands, s, msgs, labels, chosen, bad, kind, shown, cut
                )
            )
    return out


def refuse_held(user: int, history: np.ndarray, listed: Sequence[int], banned: set[int]) -> None:
    """Fail closed: whatever the options, no list may show a user's own held-out
    (validation or test) item of this split as history, candidate or target; the training
    split holding one is a bug, and nothing is built from it. (Items another evaluated split
    holds out are skipped quietly: there they are ordinary training data.)"""
    leaked = sorted(({int(i) for i in history} | {int(i) for i in listed}) & banned)
    if leaked:
        raise LeakageError(
            f"a training list of user {user} holds its held-out item(s) {leaked[:5]}: the "
            "training split must not contain them"
        )


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
