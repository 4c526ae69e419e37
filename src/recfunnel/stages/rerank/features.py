"""The LLM as a signal, not a judge: position-free LLM scores as features for a ranker.

For each request's head (the list so far, top ``top_n``) this stage asks the LLM two things
and keeps the answers as named per-candidate features; the order it hands on is its input's.
A later learned ranker (``kind = "ltr"`` with the ``stages`` feature group) decides how
much to trust them.

- ``llm_verbalizer``: LlamaRec's verbalizer score (the log-probability of each candidate's
  letter, renormalised over the listed letters), averaged over ``shuffles`` listings. Each
  listing is a seeded shuffle of the candidates in item order: the input order is never
  shown, so no score can lean on where the previous stage put a candidate, and averaging
  over listings shrinks what a candidate's (random) slot adds.
- ``llm_yes``: TALLRec's pointwise P(yes) for each candidate on its own.
- ``llm_verbalizer_rank``, ``llm_yes_rank``: their ranks within the list (0 = best).

``placebo = true`` permutes the four features across the candidates of each list (one
seeded permutation per list): the same LLM answers, their link to the candidates cut. A
ranker that gains from the real features but not from the placebo is not fitting noise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Self

import numpy as np
from pydantic import Field
from scipy.stats import rankdata

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.types import Request
from recfunnel.llm.base import LLMUnavailable, OptionScores
from recfunnel.stages.base import FitContext, LLMStage, LLMStageConfig, LLMStats, Trace
from recfunnel.stages.rerank.base import user_rng
from recfunnel.stages.rerank.prompts import (
    LABELS,
    PROMPT_VERSION,
    YES_NO,
    pointwise_prompt,
    verbalizer_prompt,
)
from recfunnel.stages.rerank.scoring import over_listed, p_yes

log = logging.getLogger(__name__)

FEATURES = ("llm_verbalizer", "llm_verbalizer_rank", "llm_yes", "llm_yes_rank")


class LLMFeaturesConfig(LLMStageConfig):
    """An LLM feature stage (see the module's docstring)."""

    kind: Literal["llm-features"] = "llm-features"
    top_n: int = Field(20, ge=2, le=len(LABELS), description="candidates scored per request")
    shuffles: int = Field(2, ge=1, description="verbalizer listings averaged per request")
    pointwise: bool = Field(True, description="also ask P(yes) for each candidate")
    placebo: bool = Field(False, description="permute the features within each list")


class LLMFeatures(LLMStage[LLMFeaturesConfig]):
    """Adds position-free LLM scores to the head; keeps its order."""

    family = "llm"
    mode = "head"
    probed = True
    keeps_order = True
    config_class = LLMFeaturesConfig

    @property
    def name(self) -> str:
        return self.config.name or "llm:features"

    def fit(self, ctx: FitContext) -> Self:
        super().fit(ctx)
        self.style_ = self.prompt_style(ctx.catalog)
        self.catalog_ = ctx.catalog
        return self

    def listings(self, request: Request, items: np.ndarray) -> list[np.ndarray]:
        """The ``shuffles`` orders the candidates are shown in: seeded shuffles of the
        candidates in item order, so the input order never shows through."""
        canonical = np.sort(items)
        return [canonical[user_rng(self.config.seed, request, k).permutation(len(canonical))]
                for k in range(self.config.shuffles)]  # fmt: skip

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        head = trace.head(self.config.top_n)
        meter = self.meter()
        n_rows, depth = head.items.shape
        feats = {k: np.full((n_rows, depth), np.nan) for k in FEATURES}
        fallback = np.zeros(n_rows, dtype=bool)
        st = LLMStats(rows=n_rows, users=n_rows, row_seconds=np.zeros(n_rows))
        for r in range(n_rows):  # one user per call: its prompts share the history prefix
            items = head.items[r][head.items[r] != PAD]
            try:
                verb, yes = self._score(requests[r], items, r, st)
            except LLMUnavailable as exc:
                log.warning("%s: back-end unavailable (%s); no LLM features", self.name, exc)
                fallback[r] = True
                continue
            n = len(verb)
            feats["llm_verbalizer"][r, :n] = verb
            feats["llm_verbalizer_rank"][r, :n] = rankdata(-verb, method="average") - 1
            if yes is not None:
                feats["llm_yes"][r, :n] = yes
                feats["llm_yes_rank"][r, :n] = rankdata(-yes, method="average") - 1
        if self.config.placebo:
            self._permute(requests, head.items, feats)
        st.fallback_rows = int(fallback.sum())
        st.add_usage(meter.used)
        # the order is the input's (``keeps_order``); the ranker after this stage reorders
        return CandidateBatch(head.items, head.scores, self.name, fallback, dict(feats), st)

    def _score(self, request: Request, items: np.ndarray, row: int,
               st: LLMStats) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        """One user's mean verbalizer log-prob and P(yes) of each candidate (``items``, the
        head's real items in order). Each LLM call holds this user's prompts, which share
        the system text and the history: a back-end with ``prefix_cache`` runs that prefix
        once per call."""
        cat, style = self.catalog_, self.style_
        listings = self.listings(request, items)
        prompts = [verbalizer_prompt(cat, request.history, listing.tolist(), style)[0]
                   for listing in listings]  # fmt: skip
        answers = self.llm.option_logprobs_many(prompts, LABELS[: max(len(items), 1)],
                                                PROMPT_VERSION)  # fmt: skip
        verb = np.zeros(len(items))
        for listing, a in zip(listings, answers, strict=True):
            n = len(listing)
            lp = over_listed(a.logprobs[:n])
            score_of = dict(zip(listing.tolist(), lp.tolist(), strict=True))
            verb += np.array([score_of[int(i)] for i in items]) / self.config.shuffles
            _count(st, row, a)
        if not self.config.pointwise:
            return verb, None
        asked = np.sort(items)  # asked in item order too: the same batch whatever the input
        pw = [pointwise_prompt(cat, request.history, int(i), style) for i in asked]
        got = self.llm.option_logprobs_many(pw, list(YES_NO), PROMPT_VERSION)
        pairs = np.array([a.logprobs[:2] for a in got]).reshape(-1, 2)
        yes = dict(zip(asked.tolist(), p_yes(pairs).tolist(), strict=True))
        for a in got:
            _count(st, row, a)
        return verb, np.array([yes[int(i)] for i in items])

    def _permute(self, requests: Sequence[Request], items: np.ndarray,
                 feats: dict[str, np.ndarray]) -> None:  # fmt: skip
        """The placebo: one seeded permutation per list, applied to every feature."""
        for r, req in enumerate(requests):
            n = int((items[r] != PAD).sum())
            perm = user_rng(self.config.seed, req, 99).permutation(n)
            for values in feats.values():
                values[r, :n] = values[r, :n][perm]


def _count(st: LLMStats, row: int, answer: OptionScores) -> None:
    """One scored prompt in the stage's stats: an output, whether invalid, its time."""
    st.outputs += 1
    st.invalid_outputs += int(answer.missing > 0)
    st.row_seconds[row] += answer.compute_s  # type: ignore[index]
