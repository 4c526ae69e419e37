"""The rerankers' prompts (verbalizer, permutation, pointwise, the goal graph's nodes),
each rendered by one small function.

A candidate may carry its previous-stage rank (as LLM4Rerank does) so a small model can
refine the ranker's order instead of guessing from titles. ``PROMPT_VERSION`` is part of
every cached answer's key: bump it when a template changes meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recfunnel.core.types import Catalog
from recfunnel.llm.base import Message
from recfunnel.stages.text import PromptStyle, history_block, item_line

PROMPT_VERSION = "rerank-prompts/2"
"""Part of every cached answer's key: bump it when a template below changes meaning."""

LABELS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [
    chr(c) for c in range(ord("a"), ord("z") + 1)
]
"""Single-character candidate labels for the verbalizer (each one token in common tokenizers)."""


def _candidate_lines(
    catalog: Catalog,
    items: Sequence[int],
    labels: Sequence[str],
    style: PromptStyle,
    prev_ranks: Sequence[int] | None,
) -> str:
    lines = []
    for j, (label, item) in enumerate(zip(labels, items, strict=True)):
        line = f"{label} {item_line(catalog, item, style)}"
        if style.show_prev_rank and prev_ranks is not None:
            line += f" (ranker's rank: {prev_ranks[j] + 1})"
        lines.append(line)
    return "\n".join(lines)


def verbalizer_prompt(
    catalog: Catalog,
    history: np.ndarray,
    items: Sequence[int],
    style: PromptStyle,
    prev_ranks: Sequence[int] | None = None,
) -> tuple[list[Message], list[str]]:
    """LlamaRec's single-pass prompt: candidates labelled A, B, …; the answer is one label."""
    labels = LABELS[: len(items)]
    if len(items) > len(LABELS):
        raise ValueError(f"the verbalizer labels at most {len(LABELS)} candidates")
    cands = _candidate_lines(catalog, items, [f"{lab}." for lab in labels], style, prev_ranks)
    user = (
        f"{history_block(catalog, history, style)}\n\n"
        f"Candidate {style.noun}s:\n{cands}\n\n"
        f"Which candidate will the user most likely enjoy next? "
        f"Answer with its letter only."
    )
    system = f"You are a {style.noun} recommender. You answer with a single letter."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], labels


def permutation_prompt(
    catalog: Catalog,
    history: np.ndarray,
    items: Sequence[int],
    style: PromptStyle,
    prev_ranks: Sequence[int] | None = None,
) -> list[Message]:
    """RankGPT's listwise prompt: identifiers [1]..[n]; the answer is '[2] > [1] > …'."""
    n = len(items)
    labels = [f"[{j + 1}]" for j in range(n)]
    cands = _candidate_lines(catalog, items, labels, style, prev_ranks)
    user = (
        f"{history_block(catalog, history, style)}\n\n"
        f"Here are {n} candidate {style.noun}s, each with an identifier in brackets:\n{cands}\n\n"
        f"Rank all {n} candidates by how likely the user is to enjoy them next, most likely "
        f"first. Answer only with the identifiers in the format [2] > [1] > [3], "
        f"with no explanation."
    )
    system = f"You are RankGPT, an assistant that ranks {style.noun}s by a user's preferences."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


YES_NO = ("Yes", "No")


def pointwise_prompt(
    catalog: Catalog,
    history: np.ndarray,
    item: int,
    style: PromptStyle,
    prev_rank: int | None = None,
) -> list[Message]:
    """TALLRec's yes/no question about one candidate; P(yes) is read from the logits."""
    about = item_line(catalog, item, style)
    if style.show_prev_rank and prev_rank is not None:
        about += f" (ranker's rank: {prev_rank + 1})"
    user = (
        f"{history_block(catalog, history, style)}\n\n"
        f"Will the user enjoy this {style.noun}: {about}?\nAnswer Yes or No."
    )
    system = f"You are a {style.noun} recommender. You answer Yes or No."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


GOAL_NODES = ("accuracy", "diversity", "fairness", "backward", "stop")
"""LLM4Rerank's graph: three aspect nodes the model reranks at, plus undo and stop."""

ASPECT_TASKS = {
    "accuracy": "put first the candidates this user is most likely to enjoy",
    "diversity": "mix genres, so that the top of the list covers different genres "
    "(each candidate's genres are listed)",
    "fairness": "give the two release-year groups a similar share of the top positions "
    "(each candidate's group is listed)",
}


GOAL_PREFILL = "Ranking: ["
"""The opening of every goal-node answer, written for the model: small models otherwise
echo the format instructions instead of filling them in."""


def goal_prompt(
    catalog: Catalog,
    history: np.ndarray,
    items: Sequence[int],
    order: Sequence[int],
    scores: Sequence[float],
    groups: Sequence[str],
    steps: Sequence[tuple[str, Sequence[int]]],
    aspect: str,
    goal: str,
    style: PromptStyle,
    proposal: Sequence[int] | None = None,
) -> list[Message]:
    """One node of LLM4Rerank's walk. Candidates are listed in the current order with ids
    1..n (their input positions) — or, with ``proposal``, in the order the aspect's classical
    method proposes, numbered 1..n down that list (a small model counts "1, 2, 3, …", which
    then accepts the proposal rather than undoing it) — with the ranker's score and their
    fairness group; ``steps`` is the history pool ("Focus: X. Result: [...]") in these ids."""
    n = len(items)
    listed = list(order if proposal is None else proposal)
    label = {j: (k + 1 if proposal is not None else j + 1) for k, j in enumerate(listed)}
    heading = "current order" if proposal is None else f"order proposed for {aspect}"
    lines = [
        f"{label[j]}. {item_line(catalog, items[j], style)} | score {scores[j]:.2f} | {groups[j]}"
        for j in listed
    ]
    pool = "\n".join(f"Focus: {a}. Result: {[label[j] for j in r]}" for a, r in steps)
    user = (
        f"Goal: {goal}\n\n"
        f"{history_block(catalog, history, style)}\n\n"
        f"Candidates (id. {style.noun} | ranker score | group), {heading}:\n"
        + "\n".join(lines)
        + f"\n\nEarlier steps:\n{pool or 'none yet'}\n\n"
        f"Now focus on {aspect}: {ASPECT_TASKS[aspect]}.\n"
        f"Answer in exactly two lines: the {n} ids in your order, then the aspect the goal "
        f"needs next ({', '.join(GOAL_NODES)}), in this form:\n"
        f"Ranking: [id, id, ...]\nNext: aspect"
    )
    system = (
        f"You rerank {style.noun}s for a user toward a goal, one aspect at a time. "
        f"You answer in exactly two lines."
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": GOAL_PREFILL},  # the answer starts on its format
    ]
