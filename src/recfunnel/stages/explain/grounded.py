"""Grounded explanations: one short reason per recommended item, checked against the
user's history before it is shown.

The LLM writes "Because you liked X and Y, …" from the user's history. A grounding check
rejects an answer that names a title outside the history and the candidates (a
hallucination, or a movie the user never saw), or that names no history title at all
(then it is not a reason *from the history*). A rejected answer is regenerated once with
the specific error; a second rejection is replaced by a template reason that states only
catalog facts: the genres the item shares with the liked titles it names, or a plain
popularity reason when it shares none. The same check (titles, years, shared genres) runs
over the template reasons too. Each outcome is counted, so the rate of grounded LLM
reasons, and of grounded template reasons beside it, is a number the report shows, not a
hope.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch, cut
from recfunnel.core.errors import NotFittedError
from recfunnel.core.titles import TitleIndex
from recfunnel.core.types import Catalog, Request
from recfunnel.llm.base import Message, Meter
from recfunnel.stages.base import FitContext, LLMStage, LLMStageConfig, LLMStats, Trace
from recfunnel.stages.text import PromptStyle, history_block, item_line

PROMPT_VERSION = "explain/1"
"""Part of every cached answer's key: bump it when :func:`explain_prompt` changes meaning."""

EXPLAIN_PREFILL = "Because you liked"
"""Every answer opens on the history: a small model then names a history title next."""

Source = Literal["llm", "regenerated", "template"]


class ExplainConfig(LLMStageConfig):
    """Explanations for the top ``top_k`` items of every request."""

    kind: Literal["explain"] = "explain"
    top_k: int = Field(10, ge=1, description="items explained per request (from the top)")
    max_requests: int | None = Field(
        None,
        ge=1,
        description="explain only the first N requests of a batch (an evaluation "
        "sample: generation costs far more than scoring); None: all",
    )
    history_items: int = Field(5, ge=1, description="history titles shown to the LLM")
    max_tokens: int = Field(48, ge=8)
    require_history: bool = Field(
        True, description="reject a reason that names no title from the user's history"
    )
    title_chars: int = Field(60, ge=8, description="titles are cut to this many characters")


def grounding_errors(
    text: str,
    index: TitleIndex,
    history: Sequence[int] | np.ndarray,
    candidates: Sequence[int] | np.ndarray,
    require_history: bool = True,
    item: int | None = None,
) -> list[str]:
    """Why ``text`` is not a grounded reason (empty: it is). A name several catalog items
    share ("Beauty and the Beast") is allowed when any of them is.

    Checked, for LLM and template reasons alike: every title named is in the history or
    the candidates, a history title is named (``require_history``), and a year written
    after a title ("Toy Story (1995)") is that title's. Given the explained ``item``, a
    genre claimed as shared (a genre named after "also": "… is also Comedy") must be a
    genre of the item and of every history title the reason names."""
    named, unknown = index.mentions(text)
    allowed = {int(i) for i in history} | {int(i) for i in candidates}
    titles = index.catalog.frame["title"]
    outside = sorted({str(titles.iloc[min(ids)]) for ids in named.values() if not ids & allowed})
    errors = [f"it names {t!r}, which is not in the user's history" for t in outside]
    errors += [f"it names {q!r}, which is not a known title" for q in unknown]
    hist = {int(i) for i in history}
    if require_history and hist and not any(ids & hist for ids in named.values()):
        errors.append("it names none of the user's liked titles")
    years = index.catalog.years
    for written, year, ids in index.dated(text):
        if not any(years[i] == year or f"({year})" in str(titles.iloc[i]) for i in ids):
            known = sorted({int(years[i]) for i in ids if years[i] == years[i]})
            errors.append(f"it dates {written!r} {year}, but the catalog says "
                          f"{' or '.join(map(str, known)) or 'no year'}")  # fmt: skip
    if item is not None:
        errors += _genre_errors(text, index, named, hist, int(item))
    return errors


def _genre_errors(
    text: str, index: TitleIndex, named: dict[str, set[int]], hist: set[int], item: int
) -> list[str]:
    """Genres claimed as shared (named after the last "also") that the item or a named
    history title lacks."""
    if " also " not in f" {text} ":
        return []
    claim = text.rsplit(" also ", 1)[-1]
    catalog = index.catalog
    sets = catalog.genre_sets
    liked = sorted({min(ids & hist) for ids in named.values() if ids & hist})
    errors = []
    for genre in sorted({g for gs in sets for g in gs}):
        if not re.search(rf"(?<![\w-]){re.escape(genre)}(?![\w-])", claim, re.IGNORECASE):
            continue
        lacking = [int(i) for i in [item, *liked] if genre not in sets[i]]
        errors += [f"it calls {genre!r} shared, but {catalog.titles[i]} is not {genre}"
                   for i in lacking]  # fmt: skip
    return errors


@dataclass
class Explanation:
    """One item's reason and where it came from."""

    item: int
    text: str
    source: Source
    errors: list[str] = field(default_factory=list)
    """Why the LLM's answers were rejected (empty for a first-time grounded answer)."""


def _genre_list(genres: Sequence[str]) -> str:
    names = list(genres)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


MAX_TEMPLATE_GENRES = 3


def template_reason(catalog: Catalog, item: int, history: Sequence[int] | np.ndarray) -> str:
    """A reason that states only facts of the catalog: always grounded, never eloquent.

    The liked title sharing most genres with the item (latest first on ties) is named with
    the genres it shares with the item; a second liked title is named too when it has
    every one of those genres (so "is also X" holds of each title named). When no liked
    title shares a genre, a plain popularity reason names the item's own genres and no
    liked title (a "because you liked" would claim a likeness that is not there)."""
    titles, sets = catalog.titles, catalog.genre_sets
    title = str(titles[item])
    mine = sets[item]
    latest_first = [int(h) for h in np.asarray(history, dtype=np.int64)[::-1] if int(h) != item]
    shared = [len(mine & sets[h]) for h in latest_first]
    order = sorted(range(len(latest_first)), key=lambda j: (-shared[j], j))
    if order and shared[order[0]] > 0:
        first = latest_first[order[0]]
        common = sorted(mine & sets[first])[:MAX_TEMPLATE_GENRES]
        second = next((latest_first[j] for j in order[1:]
                       if latest_first[j] != first and set(common) <= sets[latest_first[j]]),
                      None)  # fmt: skip
        liked = " and ".join(str(titles[h]) for h in [first, second] if h is not None)
        return f"Because you liked {liked}: {title} is also {_genre_list(common)}."
    own = sorted(mine)[:MAX_TEMPLATE_GENRES]
    if not own:
        return f"{title} is popular with viewers like you."
    kind = _genre_list(own)
    a = "an" if kind[0].lower() in "aeiou" else "a"
    return f"{title} is {a} {kind} title popular with viewers like you."


def explain_prompt(
    catalog: Catalog, history: np.ndarray, item: int, style: PromptStyle
) -> list[Message]:
    noun = style.noun
    user = (
        f"{history_block(catalog, history, style)}\n\n"
        f"Recommended {noun}: {item_line(catalog, item, style)}\n\n"
        f"In one sentence, say why this user would like the recommended {noun}, naming "
        f"one or two {noun}s from their list above. Name no other {noun}s."
    )
    return [
        {"role": "system", "content": f"You explain {noun} recommendations in one sentence."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": EXPLAIN_PREFILL},
    ]


def _sentence(text: str) -> str:
    """The answer (it continues the prefill), cut at its first sentence end."""
    body = text.strip()
    if not body.lower().startswith(EXPLAIN_PREFILL.lower()):
        body = f"{EXPLAIN_PREFILL} {body}"
    m = re.search(r"(?<!\b[A-Z])[.!?](\s|$)", body)
    return (body[: m.start() + 1] if m else body).strip()


@dataclass
class ExplainStats(LLMStats):
    """How the explained items' reasons came about (rates over explained items)."""

    explained: int = 0
    llm: int = 0
    regenerated: int = 0
    template: int = 0
    template_grounded: int = 0
    """Template reasons that pass the same check as the LLM's (with their item's genres)."""
    first_rejected: int = 0

    def figures(self) -> dict[str, float]:
        n = max(self.explained, 1)
        keep = ("llm_calls", "prompt_tokens", "completion_tokens", "llm_calls_per_user",
                "prompt_tokens_per_user", "completion_tokens_per_user", "invalid_rate")  # fmt: skip
        return {
            **{k: v for k, v in super().figures().items() if k in keep},
            "explained": float(self.explained),
            "grounded_rate": (self.llm + self.regenerated) / n,
            "llm_rate": self.llm / n,
            "regenerated_rate": self.regenerated / n,
            "template_rate": self.template / n,
            # the same check over the template reasons (1 when none was needed)
            "template_grounded_rate": (
                self.template_grounded / self.template if self.template else 1.0
            ),
            "first_rejected_rate": self.first_rejected / n,
        }


class Explainer(LLMStage[ExplainConfig]):
    """Writes, checks and counts the reasons for a batch of rankings: the pipeline's last
    stage, which annotates the final list without changing it."""

    family = "explain"
    mode = "note"
    config_class = ExplainConfig

    @property
    def name(self) -> str:
        return self.config.name or "explain"

    def fit(self, ctx: FitContext) -> Self:
        super().fit(ctx)
        catalog = ctx.catalog
        self.catalog_ = catalog
        self.index_ = TitleIndex(catalog)
        self.style_ = self.prompt_style(catalog)
        return self

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        """The final list's top items, each with its :class:`Explanation` in
        ``extras["explanation"]`` (None where a row was not explained)."""
        assert trace.final is not None
        ranked = cut(trace.final, trace.k)
        reasons, st = self.explain(requests, ranked)
        top = min(self.config.top_k, ranked.depth)
        notes = np.full((len(ranked), top), None, dtype=object)
        for r, row in enumerate(reasons):
            for j, e in enumerate(row):
                notes[r, j] = e
        return CandidateBatch(ranked.items[:, :top], ranked.scores[:, :top], self.name,
                              extras={"explanation": notes}, stats=st)  # fmt: skip

    def explain(
        self, requests: Sequence[Request], ranked: CandidateBatch
    ) -> tuple[list[list[Explanation]], ExplainStats]:
        """Reasons for the top ``top_k`` items of each row of ``ranked`` (rows past
        ``max_requests`` get none), and what producing them took."""
        if not self.fitted:
            raise NotFittedError(f"{self.name} is not fitted: call fit() before explain()")
        if len(requests) != len(ranked):
            raise ValueError(f"{len(requests)} requests for {len(ranked)} rankings")
        meter = self.meter()
        rows = len(requests) if self.config.max_requests is None else self.config.max_requests
        jobs = [(r, int(i)) for r, row in enumerate(ranked.items[:rows])
                for i in row[: self.config.top_k] if i != PAD]  # fmt: skip
        asked = [(r, i) for r, i in jobs if len(requests[r].history)]
        first = {
            job: (text, self._check(requests[job[0]], ranked.items[job[0]], job[1], text))
            for job, text in zip(asked, self._ask([self._prompt(requests[r], i) for r, i in asked]),
                                 strict=True)
        }  # fmt: skip
        retry = [job for job in asked if first[job][1]]
        fix = [
            [
                *self._prompt(requests[r], i)[:-1],
                {"role": "assistant", "content": first[(r, i)][0]},
                {
                    "role": "user",
                    "content": f"That reason is not allowed: "
                    f"{'; '.join(first[(r, i)][1])}. Try again, naming only {self.style_.noun}s "
                    f"from the user's list.",
                },
                {"role": "assistant", "content": EXPLAIN_PREFILL},
            ]
            for r, i in retry
        ]
        second = dict(zip(retry, self._ask(fix), strict=True))
        out: list[list[Explanation]] = [[] for _ in requests]
        again_rejected: dict[tuple[int, int], bool] = {}
        for r, i in jobs:
            if (r, i) not in first:
                exp = Explanation(i, template_reason(self.catalog_, i, []), "template",
                                  ["the user has no history to ground a reason in"])  # fmt: skip
            elif not first[(r, i)][1]:
                exp = Explanation(i, first[(r, i)][0], "llm")
            else:
                errs = first[(r, i)][1]
                again = self._check(requests[r], ranked.items[r], i, second[(r, i)])
                again_rejected[(r, i)] = bool(again)
                exp = (Explanation(i, second[(r, i)], "regenerated", errs) if not again
                       else Explanation(i, template_reason(self.catalog_, i, requests[r].history),
                                    "template", errs + again))  # fmt: skip
            out[r].append(exp)
        # every LLM answer is an output; a rejected one is invalid (a re-ask that is
        # rejected again ends in a template)
        invalid = len(retry) + sum(again_rejected.values())
        return out, self._count(out, meter, requests, ranked, len(asked) + len(retry), invalid)

    def _prompt(self, req: Request, item: int) -> list[Message]:
        return explain_prompt(self.catalog_, req.history, item, self.style_)

    def _ask(self, prompts: list[list[Message]]) -> list[str]:
        if not prompts:
            return []
        got = self.llm.complete_many(prompts, max_tokens=self.config.max_tokens, stop=["\n"],
                                     template=PROMPT_VERSION)  # fmt: skip
        return [_sentence(a.text) for a in got]

    def _check(self, req: Request, row: np.ndarray, item: int, text: str) -> list[str]:
        return grounding_errors(
            text,
            self.index_,
            req.history,
            [int(i) for i in row if i != PAD],
            self.config.require_history,
            item=item,
        )

    def _count(
        self,
        out: list[list[Explanation]],
        meter: Meter,
        requests: Sequence[Request],
        ranked: CandidateBatch,
        answers: int,
        invalid: int,
    ) -> ExplainStats:
        """Counts by source; every LLM answer is an output, a rejected one an invalid
        output; each template reason goes through the same check as the LLM's (its
        grounded rate is reported beside theirs)."""
        every = [e for row in out for e in row]
        templated = [(r, e) for r, row in enumerate(out) for e in row if e.source == "template"]
        template_ok = sum(
            not grounding_errors(
                e.text,
                self.index_,
                requests[r].history,
                [int(i) for i in ranked.items[r] if i != PAD],
                require_history=False,
                item=e.item,
            )
            for r, e in templated
        )
        st = ExplainStats(
            rows=len(out), users=len(out), explained=len(every),
            llm=sum(e.source == "llm" for e in every),
            regenerated=sum(e.source == "regenerated" for e in every),
            template=len(templated), template_grounded=template_ok,
            first_rejected=sum(bool(e.errors) for e in every),
            outputs=answers, invalid_outputs=invalid,
        )  # fmt: skip
        st.add_usage(meter.used)
        return st
