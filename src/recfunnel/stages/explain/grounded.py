"""Grounded explanations: one short reason per recommended item, checked against the
user's history before it is shown.

The LLM writes "Because you liked X and Y, …" from the user's history. A grounding check
rejects an answer that names a title outside the history and the candidates (a
hallucination, or a movie the user never saw), or that names no history title at all
(then it is not a reason *from the history*). A rejected answer is regenerated once with
the specific error; a second rejection is replaced by a template reason built from the
genres and tags the item shares with the history. Each outcome is counted, so the rate of
grounded LLM reasons is a number the report shows, not a hope.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch, cut
from recfunnel.core.types import Catalog, Request
from recfunnel.llm.base import LLMConfig, Message
from recfunnel.stages.base import FitContext, LLMStage, LLMStats, StageConfig, Trace
from recfunnel.stages.text import PromptStyle, history_block, item_line

PROMPT_VERSION = "explain/1"
"""Part of every cached answer's key: bump it when :func:`explain_prompt` changes meaning."""

EXPLAIN_PREFILL = "Because you liked"
"""Every answer opens on the history: a small model then names a history title next."""

Source = Literal["llm", "regenerated", "template"]


class ExplainConfig(StageConfig):
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
    title_chars: int = Field(60, ge=8)
    llm: LLMConfig = Field(default_factory=LLMConfig)


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def normalize(text: str) -> str:
    """Lower-case words only: accents, punctuation and spacing do not decide a match."""
    return " ".join(re.findall(r"[a-z0-9]+", _ascii(text).lower()))


_YEAR = re.compile(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$")
_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El|L')$", re.IGNORECASE)


def title_forms(title: str) -> set[str]:
    """How a text may name a catalog title: as listed ("Dumbo (1941)"), without its year,
    with a trailing article ("Matrix, The") moved to the front, and without any
    alternative title in brackets."""
    base = _YEAR.sub("", title).strip()
    forms = {title, base, re.sub(r"\s*\(.*?\)", "", base).strip()}
    for f in list(forms):
        m = _ARTICLE.match(f)
        if m:
            forms |= {f"{m.group(2)} {m.group(1)}", m.group(1)}
    return {n for n in map(normalize, forms) if n}


class TitleIndex:
    """Finds the catalog titles a text names. Unquoted, a title counts when it has two or
    more words (its year counts: "Heat (1995)") and starts with a capital or a digit
    ("Heat", "Children" or "the others" alone would match ordinary prose); any quoted
    phrase is checked too, so a quoted title the catalog does not know counts as
    invented."""

    MAX_WORDS = 12

    def __init__(self, catalog: Catalog) -> None:
        self.by_form: dict[str, set[int]] = {}
        for i, title in enumerate(catalog.frame["title"].astype(str)):
            for form in title_forms(title):
                self.by_form.setdefault(form, set()).add(i)
        self.catalog = catalog

    def mentions(
        self, text: str, single_words: Container[str] | None = None
    ) -> tuple[dict[str, set[int]], list[str]]:
        """(each title form named in ``text`` → the catalog items it may mean, quoted
        phrases that are no catalog title). Longest match first, so "Star Wars: Episode IV
        - A New Hope" is one title, not also "A New Hope". ``single_words``: also accept
        capitalised one-word titles of 4+ letters except these (a user typing "Inception"
        means the film; generated prose saying "Heat" may not)."""
        raw = re.findall(r"[A-Za-z0-9]+", _ascii(text))
        words = [w.lower() for w in raw]
        found: dict[str, set[int]] = {}
        shortest = 1 if single_words is not None else 2
        a = 0
        while a < len(words):
            hit = None
            for b in range(min(a + self.MAX_WORDS, len(words)), a + shortest - 1, -1):
                form = " ".join(words[a:b])
                if b == a + 1 and (len(form) < 4 or form in (single_words or ())):
                    continue
                if form in self.by_form and (raw[a][0].isupper() or raw[a][0].isdigit()):
                    hit = b
                    found[form] = self.by_form[form]
                    break
            a = hit if hit is not None else a + 1
        unknown = []
        for quoted in re.findall(r"[\"“]([^\"”]{2,80})[\"”]", text):
            form = normalize(_YEAR.sub("", quoted))
            if form in self.by_form:
                found[form] = self.by_form[form]
            else:
                unknown.append(quoted.strip())
        return found, unknown


def grounding_errors(
    text: str,
    index: TitleIndex,
    history: Sequence[int] | np.ndarray,
    candidates: Sequence[int] | np.ndarray,
    require_history: bool = True,
) -> list[str]:
    """Why ``text`` is not a grounded reason (empty: it is). A name several catalog items
    share ("Beauty and the Beast") is allowed when any of them is."""
    named, unknown = index.mentions(text)
    allowed = {int(i) for i in history} | {int(i) for i in candidates}
    titles = index.catalog.frame["title"]
    outside = sorted({str(titles.iloc[min(ids)]) for ids in named.values() if not ids & allowed})
    errors = [f"it names {t!r}, which is not in the user's history" for t in outside]
    errors += [f"it names {q!r}, which is not a known title" for q in unknown]
    hist = {int(i) for i in history}
    if require_history and hist and not any(ids & hist for ids in named.values()):
        errors.append("it names none of the user's liked titles")
    return errors


@dataclass
class Explanation:
    """One item's reason and where it came from."""

    item: int
    text: str
    source: Source
    errors: list[str] = field(default_factory=list)
    """Why the LLM's answers were rejected (empty for a first-time grounded answer)."""


def template_reason(catalog: Catalog, item: int, history: Sequence[int] | np.ndarray) -> str:
    """A reason from the genres the item shares with the history (the two liked titles
    sharing most, latest first on ties): always grounded, never eloquent."""
    titles = catalog.titles
    title = str(titles[item])
    mine = catalog.genre_sets[item]
    latest_first = np.asarray(history, dtype=np.int64)[::-1]
    g = catalog.genre_matrix
    shared = g[latest_first] @ g[item] if len(latest_first) else np.zeros(0)
    order = np.lexsort((np.arange(len(shared)), -shared))  # most shared, then latest
    best = [int(latest_first[j]) for j in order[:2] if shared[j] > 0]
    names = ", ".join(sorted(mine)[:2]) or "similar"
    a = "an" if names[0].lower() in "aeiou" else "a"
    if best:
        liked = " and ".join(str(titles[h]) for h in best)
        return f"Because you liked {liked}: {title} is also {names}."
    if len(history):  # nothing shared: name the latest liked title, claim no likeness
        return (
            f"Because you liked {titles[int(history[-1])]}: {title} is {a} "
            f"{names} title popular with viewers like you."
        )
    return f"{title} is {a} {names} title popular with viewers like you."


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
        self.style_ = PromptStyle(
            noun=catalog.noun,
            history_items=self.config.history_items,
            title_chars=self.config.title_chars,
        )
        self._stats = ExplainStats()
        return self

    def __call__(self, requests: Sequence[Request], trace: Trace) -> CandidateBatch:
        """The final list's top items, each with its :class:`Explanation` in
        ``extras["explanation"]`` (None where a row was not explained)."""
        assert trace.final is not None
        ranked = cut(trace.final, trace.k)
        reasons = self.explain(requests, ranked)
        top = min(self.config.top_k, ranked.depth)
        notes = np.full((len(ranked), top), None, dtype=object)
        for r, row in enumerate(reasons):
            for j, e in enumerate(row):
                notes[r, j] = e
        return CandidateBatch(ranked.items[:, :top], ranked.scores[:, :top], self.name,
                              extras={"explanation": notes})  # fmt: skip

    def explain(
        self, requests: Sequence[Request], ranked: CandidateBatch
    ) -> list[list[Explanation]]:
        """Reasons for the top ``top_k`` items of each row of ``ranked`` (rows past
        ``max_requests`` get none)."""
        if not hasattr(self, "index_"):
            raise RuntimeError("fit the explainer before explain()")
        if len(requests) != len(ranked):
            raise ValueError(f"{len(requests)} requests for {len(ranked)} rankings")
        before = self.llm.usage.copy()
        rows = len(requests) if self.config.max_requests is None else self.config.max_requests
        jobs = [(r, int(i)) for r, row in enumerate(ranked.items[:rows])
                for i in row[: self.config.top_k] if i != PAD]  # fmt: skip
        asked = [(r, i) for r, i in jobs if len(requests[r].history)]
        first = {
            job: (text, self._check(requests[job[0]], ranked.items[job[0]], text))
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
        for r, i in jobs:
            if (r, i) not in first:
                exp = Explanation(i, template_reason(self.catalog_, i, []), "template",
                                  ["the user has no history to ground a reason in"])  # fmt: skip
            elif not first[(r, i)][1]:
                exp = Explanation(i, first[(r, i)][0], "llm")
            else:
                errs = first[(r, i)][1]
                again = self._check(requests[r], ranked.items[r], second[(r, i)])
                exp = (Explanation(i, second[(r, i)], "regenerated", errs) if not again
                       else Explanation(i, template_reason(self.catalog_, i, requests[r].history),
                                    "template", errs + again))  # fmt: skip
            out[r].append(exp)
        self._count(out, before)
        return out

    def _prompt(self, req: Request, item: int) -> list[Message]:
        return explain_prompt(self.catalog_, req.history, item, self.style_)

    def _ask(self, prompts: list[list[Message]]) -> list[str]:
        if not prompts:
            return []
        got = self.llm.complete_many(prompts, max_tokens=self.config.max_tokens, stop=["\n"],
                                     template=PROMPT_VERSION)  # fmt: skip
        return [_sentence(a.text) for a in got]

    def _check(self, req: Request, row: np.ndarray, text: str) -> list[str]:
        return grounding_errors(
            text,
            self.index_,
            req.history,
            [int(i) for i in row if i != PAD],
            self.config.require_history,
        )

    def _count(self, out: list[list[Explanation]], before: Any) -> None:
        every = [e for row in out for e in row]
        st = ExplainStats(
            rows=len(out), users=len(out), explained=len(every),
            llm=sum(e.source == "llm" for e in every),
            regenerated=sum(e.source == "regenerated" for e in every),
            template=sum(e.source == "template" for e in every),
            first_rejected=sum(bool(e.errors) for e in every),
        )  # fmt: skip
        st.add_usage(self.llm.usage.since(before))
        self._stats = st

    def stats(self) -> ExplainStats:
        return self._stats
