"""Classical beyond-accuracy rerankers: MMR (diversity), DPP (diversity), fair exposure.

Each reorders the head of the previous stage using its scores as relevance and the item
catalog's genres (similarity) or release year (fairness group); none needs an LLM, so they
are the baselines any goal-driven LLM reranker must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.groups import year_groups
from recfunnel.core.types import Request
from recfunnel.stages.base import FitContext, StageConfig
from recfunnel.stages.rerank.base import Reranker


class AspectConfig(StageConfig):
    """A non-LLM reranking stage (``kind`` = mmr, dpp or fair)."""

    kind: Literal["mmr", "dpp", "fair"]
    top_n: int = Field(20, ge=2, description="Candidates from the previous stage to rerank.")
    trade_off: float = Field(
        0.7, ge=0.0, le=1.0,
        description="mmr: λ (1 = relevance only); dpp: θ (1 = relevance only)",
    )  # fmt: skip
    split_year: int = Field(1996, description="fair: group 1 = released in or after this year")
    target: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="fair: share of every prefix owed to group 1 (None: its candidate share)",
    )  # fmt: skip
    seed: int = 0


def cosine(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of rows; a zero row is similar to nothing but itself."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)
    sim = unit @ unit.T
    np.fill_diagonal(sim, 1.0)
    return sim


def relevance(scores: np.ndarray) -> np.ndarray:
    """The previous stage's scores mapped to [0, 1] (min-max; all equal or not finite: by
    position, 1 at the top)."""
    n = len(scores)
    finite = np.isfinite(scores)
    if finite.all() and np.ptp(scores) > 0:
        return (scores - scores.min()) / np.ptp(scores)
    return 1.0 - np.arange(n) / max(n - 1, 1)


def mmr_order(rel: np.ndarray, sim: np.ndarray, lam: float) -> np.ndarray:
    """Maximal marginal relevance: each pick maximises λ·rel − (1−λ)·max sim to the picks."""
    n = len(rel)
    chosen: list[int] = []
    left = np.ones(n, dtype=bool)
    max_sim = np.zeros(n)
    for _ in range(n):
        value = np.where(left, lam * rel - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(value))  # first maximum: ties keep the input order
        chosen.append(j)
        left[j] = False
        max_sim = np.maximum(max_sim, sim[j])
    return np.array(chosen)


def dpp_order(rel: np.ndarray, sim: np.ndarray, theta: float, eps: float = 1e-10) -> np.ndarray:
    """Greedy MAP of a DPP with kernel diag(q)·S·diag(q), q = exp(α·rel), α = θ / (2(1−θ))
    (Chen et al., NeurIPS 2018: incremental Cholesky, O(n·k²)). Once no item adds volume
    (its genres are spanned by the picks), the rest follow by relevance."""
    n = len(rel)
    if theta >= 1.0:
        return np.lexsort((np.arange(n), -rel))
    alpha = theta / (2 * (1 - theta))
    q = np.exp(alpha * (rel - rel.max()))
    kernel = q[:, None] * (0.99 * sim + 0.01 * np.eye(n)) * q[None, :]
    c = np.zeros((n, n))
    d2 = np.diag(kernel).copy()
    chosen: list[int] = []
    left = np.ones(n, dtype=bool)
    while left.any():
        gains = np.where(left, d2, -np.inf)
        j = int(np.argmax(gains))
        if gains[j] < eps:
            break
        chosen.append(j)
        left[j] = False
        k = len(chosen) - 1
        e = (kernel[j] - c[:, :k] @ c[j, :k]) / np.sqrt(d2[j])
        c[:, k] = e
        d2 = d2 - e**2
    rest = np.flatnonzero(left)
    rest = rest[np.lexsort((rest, -rel[rest]))]
    return np.concatenate([np.array(chosen, dtype=np.int64), rest])


def fair_order(rel: np.ndarray, group: np.ndarray, target: float | None) -> np.ndarray:
    """Constrained greedy (FA*IR-style, deterministic): every prefix of length k holds at
    least ⌊p·k⌋ items of group 1 and ⌊(1−p)·k⌋ of group 0 while it has them to give;
    otherwise the most relevant item goes next. p = ``target`` or group 1's share here."""
    n = len(rel)
    p = float(group.mean()) if target is None else target
    order = [int(i) for i in np.lexsort((np.arange(n), -rel))]
    queues = {g: [i for i in order if group[i] == g] for g in (0, 1)}
    counts = {0: 0, 1: 0}
    out: list[int] = []
    for k in range(1, n + 1):
        owed = [g for g, share in ((1, p), (0, 1 - p))
                if queues[g] and counts[g] < np.floor(share * k + 1e-9)]  # fmt: skip
        i = queues[owed[0]][0] if owed else next(j for j in order if j not in out)
        queues[int(group[i])].remove(i)
        counts[int(group[i])] += 1
        out.append(i)
    return np.array(out, dtype=np.int64)


class AspectReranker(Reranker[AspectConfig]):
    """Reorders each row of the head by one aspect (see :class:`AspectConfig`)."""

    config_class = AspectConfig

    def fit(self, ctx: FitContext) -> Self:
        catalog = self.catalog_ = ctx.catalog
        self.genres_ = catalog.genre_matrix
        self.groups_ = year_groups(catalog, self.config.split_year)
        return self

    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        c = self.config
        items, scores = head.items.copy(), head.scores.copy()
        for r in range(len(head)):
            n = int((head.items[r] != PAD).sum())
            if n == 0:
                continue
            row = head.items[r, :n]
            rel = relevance(head.scores[r, :n])
            if c.kind == "fair":
                order = fair_order(rel, self.groups_[row], c.target)
            elif c.kind == "mmr":
                order = mmr_order(rel, cosine(self.genres_[row]), c.trade_off)
            else:
                order = dpp_order(rel, cosine(self.genres_[row]), c.trade_off)
            items[r, :n] = row[order]
            scores[r, :n] = -np.arange(n, dtype=np.float64)
        return CandidateBatch(items, scores, self.name)
