"""The three ways an LLM reranker scores a presented list (:class:`LLMReranker` in
:mod:`recfunnel.stages.rerank.llm` does the rest): LlamaRec's verbalizer (one forward pass,
label log-probs), TALLRec's pointwise P(yes), RankGPT's permutation (generated text)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recfunnel.core.types import Request
from recfunnel.llm.parse import parse_permutation
from recfunnel.stages.rerank.llm import Job, LLMReranker, Scored
from recfunnel.stages.rerank.prompts import (
    LABELS,
    PROMPT_VERSION,
    YES_NO,
    permutation_prompt,
    pointwise_prompt,
    verbalizer_prompt,
)
from recfunnel.stages.rerank.scoring import over_listed, p_yes


class VerbalizerReranker(LLMReranker):
    """One forward pass per list; each candidate's score is its label's log-probability.

    Lists longer than ``window`` are scored in consecutive prompts of ``window`` candidates;
    each prompt's label log-probs are then renormalised over its own labels, so scores
    from different prompts are on the same footing.
    """

    def score_jobs(self, requests: Sequence[Request], jobs: list[Job]) -> list[Scored]:
        cat, w = self.catalog_, self.config.window
        prompts, spans = [], []
        for job in jobs:
            n = len(job.items)
            chunks = [(lo, min(lo + w, n)) for lo in range(0, n, w)] or [(0, 0)]
            spans.append(chunks)
            for lo, hi in chunks:
                msgs, _ = verbalizer_prompt(
                    cat, requests[job.row].history, job.items[lo:hi].tolist(), self.style_,
                    job.prev_ranks[lo:hi].tolist(),
                )  # fmt: skip
                prompts.append(msgs)
        if not prompts:
            return []
        n_max = max(hi - lo for chunks in spans for lo, hi in chunks)
        answers = iter(self.llm.option_logprobs_many(prompts, LABELS[: max(n_max, 1)],
                                                     PROMPT_VERSION))  # fmt: skip
        out = []
        for chunks in spans:
            parts, missing, seconds = [], 0, 0.0
            for lo, hi in chunks:
                a = next(answers)
                lp = a.logprobs[: hi - lo]
                if len(chunks) > 1:
                    lp = over_listed(lp)
                parts.append(lp)
                missing += int(a.missing > 0)
                seconds += a.compute_s
            out.append(Scored(np.concatenate(parts), len(chunks), missing, seconds))
        return out


class PointwiseReranker(LLMReranker):
    """P(yes) for each (user, candidate); position cannot matter, so one order suffices."""

    def n_orders(self) -> int:
        return 1

    def score_jobs(self, requests: Sequence[Request], jobs: list[Job]) -> list[Scored]:
        cat = self.catalog_
        prompts = [
            pointwise_prompt(cat, requests[j.row].history, int(item), self.style_, int(rank))
            for j in jobs
            for item, rank in zip(j.items, j.prev_ranks, strict=True)
        ]
        answers = self.llm.option_logprobs_many(prompts, list(YES_NO), PROMPT_VERSION)
        out, k = [], 0
        for j in jobs:
            lp = np.array([answers[k + i].logprobs for i in range(len(j.items))])
            mine = answers[k : k + len(j.items)]
            missing = sum(a.missing > 0 for a in mine)
            k += len(j.items)
            out.append(Scored(p_yes(lp), len(j.items), missing, sum(a.compute_s for a in mine)))
        return out


class PermutationReranker(LLMReranker):
    """RankGPT: the model writes a permutation; long lists use a sliding window from the back."""

    def windows(self, n: int) -> list[tuple[int, int]]:
        """RankGPT's windows over positions [0, n): back to front, ``window`` wide."""
        w, s = self.config.window, self.config.step
        out = []
        end, start = n, n - w
        while True:
            out.append((max(start, 0), end))
            if start <= 0:
                return out
            end, start = end - s, start - s

    def score_jobs(self, requests: Sequence[Request], jobs: list[Job]) -> list[Scored]:
        cat = self.catalog_
        current = [list(range(len(j.items))) for j in jobs]  # presented positions, in order
        invalid = [0] * len(jobs)
        outputs = [0] * len(jobs)
        seconds = [0.0] * len(jobs)
        plans = [self.windows(len(j.items)) for j in jobs]
        for t in range(max((len(p) for p in plans), default=0)):
            active = [i for i, p in enumerate(plans) if t < len(p)]
            prompts, spans = [], []
            for i in active:
                lo, hi = plans[i][t]
                window = current[i][lo:hi]
                prompts.append(
                    permutation_prompt(
                        cat, requests[jobs[i].row].history,
                        [int(jobs[i].items[p]) for p in window], self.style_,
                        [int(jobs[i].prev_ranks[p]) for p in window],
                    )
                )  # fmt: skip
                spans.append((lo, hi))
            n_ids = max(hi - lo for lo, hi in spans)
            answers = self.llm.complete_many(prompts, max_tokens=6 * n_ids + 8, stop=["\n\n"],
                                             template=PROMPT_VERSION)  # fmt: skip
            for i, (lo, hi), ans in zip(active, spans, answers, strict=True):
                parsed = parse_permutation(ans.text, hi - lo)
                window = current[i][lo:hi]
                current[i][lo:hi] = [window[j] for j in parsed.order]
                invalid[i] += int(parsed.invalid)
                outputs[i] += 1
                seconds[i] += ans.compute_s
        out = []
        for i, j in enumerate(jobs):
            scores = np.empty(len(j.items))
            scores[current[i]] = -np.arange(len(j.items), dtype=np.float64)
            out.append(Scored(scores, outputs[i], invalid[i], seconds[i]))
        return out
