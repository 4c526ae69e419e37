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
from recfunnel.llm.base import LLMConfig, LLMUnavailable
from recfunnel.stages.base import (
    FitContext,
    LLMStage,
    LLMStats,
    StageConfig,
    Trace,
    noun_for,
)
from recfunnel.stages.rerank.prompts import (
    LABELS,
    PROMPT_VERSION,
    YES_NO,
    pointwise_prompt,
    verbalizer_prompt,
)
from recfunnel.stages.text import PromptStyle

log = logging.getLogger(__name__)

FEATURES = ("llm_verbalizer", "llm_verbalizer_rank", "llm_yes", "llm_yes_rank")


class LLMFeaturesConfig(StageConfig):
    """An LLM feature stage (see the module's docstring)."""

    kind: Literal["llm-features"] = "llm-features"
    top_n: int = Field(20, ge=2, le=len(LABELS), description="candidates scored per request")
    shuffles: int = Field(2, ge=1, description="verbalizer listings averaged per request")
    pointwise: bool = Field(True, description="also ask P(yes) for each candidate")
    placebo: bool = Field(False, description="permute the features within each list")
    history_items: int = Field(5, ge=0, description="most recent history items shown")
    title_chars: int = Field(40, ge=8)
    noun: str = Field("item", description="what the prompt calls an item (movie, artist…)")
    seed: int = 0
    llm: LLMConfig = Field(default_factory=LLMConfig)


class LLMFeatures(LLMStage[LLMFeaturesConfig]):
    """Adds position-free LLM scores to the head; keeps its order."""

    family = "llm"
    mode = "head"
    probed = True
    config_class = LLMFeaturesConfig

    @property
    def name(self) -> str:
        return self.config.name or "llm:features"

    def fit(self, ctx: FitContext) -> Self:
        super().fit(ctx)
        self.config = noun_for(self.config, ctx.catalog)
        c = self.config
        self.style = PromptStyle(noun=c.noun, history_items=c.history_items,
                                 title_chars=c.title_chars)  # fmt: skip
        self.catalog_ = ctx.catalog
        self._stats = LLMStats()
        return self

    def listings(self, request: Request, items: np.ndarray) -> list[np.ndarray]:
        """The ``shuffles`` orders the candidates are shown in: seeded shuffles of the
        candidates in item order, so the input order never shows through."""
        canonical = np.sort(items)
        user = -1 if request.user is None else request.user
        return [canonical[np.random.default_rng([self.config.seed, user + 1, k]).permutation(
            len(canonical))] for k in range(self.config.shuffles)]  # fmt: skip

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        head = trace.head(self.config.top_n)
        before = self.llm.usage.copy()
        n_rows, depth = head.items.shape
        feats = {k: np.full((n_rows, depth), np.nan) for k in FEATURES}
        fallback = np.zeros(n_rows, dtype=bool)
        st = LLMStats(rows=n_rows, users=n_rows, row_seconds=np.zeros(n_rows))
        for row in range(n_rows):  # one user per call: its prompts share the history prefix
            rows = [row]
            try:
                got = self._score(requests, head, rows, st)
            except LLMUnavailable as exc:
                log.warning("%s: back-end unavailable (%s); no LLM features", self.name, exc)
                fallback[rows] = True
                continue
            for r, (verb, yes) in got.items():
                n = len(verb)
                feats["llm_verbalizer"][r, :n] = verb
                feats["llm_verbalizer_rank"][r, :n] = rankdata(-verb, method="average") - 1
                if yes is not None:
                    feats["llm_yes"][r, :n] = yes
                    feats["llm_yes_rank"][r, :n] = rankdata(-yes, method="average") - 1
        if self.config.placebo:
            self._permute(requests, head.items, feats)
        st.fallback_rows = int(fallback.sum())
        st.add_usage(self.llm.usage.since(before))
        self._stats = st
        # no ``input_pos``: the order is the input's; the ranker after this stage reorders
        return CandidateBatch(head.items, head.scores, self.name, fallback, dict(feats))

    def _score(self, requests: Sequence[Request], head: CandidateBatch, rows: list[int],
               st: LLMStats) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:  # fmt: skip
        """Per row: the mean verbalizer log-prob and P(yes) of each candidate, in head order.

        Each LLM call holds one user's prompts, which share the system text and the history:
        a back-end with ``prefix_cache`` runs that prefix once per call."""
        cat, style, k = self.catalog_, self.style, self.config.shuffles
        valid = {r: head.items[r][head.items[r] != PAD] for r in rows}
        shown = {r: self.listings(requests[r], valid[r]) for r in rows}
        meta = [(r, listing) for r in rows for listing in shown[r]]
        prompts = [verbalizer_prompt(cat, requests[r].history, listing.tolist(), style)[0]
                   for r, listing in meta]  # fmt: skip
        n_max = max((len(v) for v in valid.values()), default=1)
        answers = self.llm.option_logprobs_many(prompts, LABELS[: max(n_max, 1)], PROMPT_VERSION)
        verb = {r: np.zeros(len(valid[r])) for r in rows}
        for (r, listing), a in zip(meta, answers, strict=True):
            n = len(listing)
            lp = a.logprobs[:n] - np.logaddexp.reduce(a.logprobs[:n])  # over the listed letters
            score_of = dict(zip(listing.tolist(), lp.tolist(), strict=True))
            verb[r] += np.array([score_of[int(i)] for i in valid[r]]) / k
            st.outputs += 1
            st.invalid_outputs += int(a.missing > 0)
            st.row_seconds[r] += a.compute_s  # type: ignore[index]
        yes: dict[int, np.ndarray | None] = {r: None for r in rows}
        if self.config.pointwise:  # asked in item order too: the same batch whatever the input
            asked = {r: np.sort(valid[r]) for r in rows}
            pw = [pointwise_prompt(cat, requests[r].history, int(i), style)
                  for r in rows for i in asked[r]]  # fmt: skip
            got = iter(self.llm.option_logprobs_many(pw, list(YES_NO), PROMPT_VERSION))
            for r in rows:
                p_yes = {}
                for i in asked[r]:
                    a = next(got)
                    p_yes[int(i)] = float(np.exp(a.logprobs[0] - np.logaddexp(*a.logprobs[:2])))
                    st.outputs += 1
                    st.invalid_outputs += int(a.missing > 0)
                    st.row_seconds[r] += a.compute_s  # type: ignore[index]
                yes[r] = np.array([p_yes[int(i)] for i in valid[r]])
        return {r: (verb[r], yes[r]) for r in rows}

    def _permute(self, requests: Sequence[Request], items: np.ndarray,
                 feats: dict[str, np.ndarray]) -> None:  # fmt: skip
        """The placebo: one seeded permutation per list, applied to every feature."""
        for r, req in enumerate(requests):
            n = int((items[r] != PAD).sum())
            user = -1 if req.user is None else req.user
            perm = np.random.default_rng([self.config.seed, user + 1, 99]).permutation(n)
            for values in feats.values():
                values[r, :n] = values[r, :n][perm]

    def stats(self) -> LLMStats:
        return self._stats
