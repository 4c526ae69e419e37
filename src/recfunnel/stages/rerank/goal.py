"""LLM4Rerank's goal-driven graph reranker, with the LLM call made real.

The walk starts at the accuracy node. At each aspect node (accuracy, diversity, fairness)
the LLM sees the user, up to 5 history items, the candidates with their ranker scores and
attributes, the history pool of earlier results and the user's goal sentence, and answers
with a full ranking and the next node. With ``propose`` (the default) each aspect node
lists the candidates in the order its classical method proposes from the current result
(accuracy: the ranker's order; diversity: MMR; fairness: fair exposure) for the LLM to
keep or edit: a small model copies whatever order it is shown, so without a proposal every
walk returns its input and the goal cannot matter; with one, the goal acts through the
nodes the LLM chooses to visit. ``backward`` undoes the last result and returns to
the node before it; ``stop`` ends the walk; ``max_visits`` forces a stop. An invalid answer
is re-asked once with its specific errors, then the node is skipped and the walk stops.
Every step is kept and counted in the call's stats (``GoalStats.walks``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.groups import year_groups
from recfunnel.core.types import Request
from recfunnel.llm.base import Message, Meter
from recfunnel.llm.parse import GoalAnswer, parse_goal_answer
from recfunnel.stages.base import FitContext, LLMStage, LLMStageConfig, LLMStats
from recfunnel.stages.rerank.aspects import cosine, fair_order, mmr_order, relevance
from recfunnel.stages.rerank.base import Reranker
from recfunnel.stages.rerank.prompts import GOAL_NODES, GOAL_PREFILL, PROMPT_VERSION, goal_prompt

GOALS = {
    "accuracy": "Recommend what the user will enjoy most.",
    "accuracy+diversity": "Mostly accuracy, but show me different genres near the top.",
    "accuracy+fairness": "Mostly accuracy, but give older and newer titles a fair share "
    "of the top positions.",
}
"""The three goals of the LLM4Rerank comparison, by name (``goal`` may also be any text)."""


def _answer(text: str) -> str:
    """The whole answer: the prompt opened it with ``GOAL_PREFILL`` (a server that ignores
    the open assistant turn may repeat it)."""
    return text if _RANKING_START.match(text) else GOAL_PREFILL + text


_RANKING_START = re.compile(r"\s*ranking\s*:", re.IGNORECASE)
_ONLY_NEXT_MISSING = ["no 'Next:' line"]


def _ranking_line(text: str) -> str:
    """The answer's first line, its list closed if the model stopped inside it."""
    line = text.strip().split("\n")[0].rstrip()
    return line + "]" if "[" in line and "]" not in line else line


def _overrun(n: int) -> list[str]:
    """Stops at the first id past ``n``: small models, asked for ids 1..n, keep counting
    ("…, 20, 21, 22"); cut there, the list is whole and the walker goes on to "Next:"."""
    return [f", {n + 1}", f",{n + 1}"]


class GoalConfig(LLMStageConfig):
    """A goal-driven graph reranking stage."""

    kind: Literal["goal"] = "goal"
    goal: str = Field("accuracy", description="a name in GOALS or the goal sentence itself")
    top_n: int = Field(20, ge=2, description="Candidates from the previous stage to rerank.")
    max_visits: int = Field(5, ge=1, description="nodes visited before a forced stop")
    split_year: int = Field(1996, description="fairness groups: before / from this year")
    propose: bool = Field(
        True, description="list candidates in the node's classical order (MMR, fair) for "
        "the LLM to keep or edit; False: LLM4Rerank's bare prompt",
    )  # fmt: skip
    trade_off: float = Field(0.7, ge=0.0, le=1.0, description="diversity proposal: MMR λ")
    target: float | None = Field(
        None, gt=0.0, lt=1.0, description="fairness proposal: group share owed (None: its "
        "candidate share)",
    )  # fmt: skip
    batch_size: int = Field(16, ge=1, description="walks advanced together (one LLM batch)")

    @property
    def goal_text(self) -> str:
        return GOALS.get(self.goal, self.goal)


@dataclass
class Walk:
    """One request's walk through the graph."""

    n: int
    current: list[int]
    node: str = "accuracy"
    results: list[tuple[str, list[int]]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    visits: int = 0
    done: bool = False
    forced: bool = False
    proposed: list[int] | None = None


@dataclass
class GoalStats(LLMStats):
    """The walker's figures: answers (``outputs``), re-asks that failed again (skipped),
    continued answers, kept proposals, forced stops and node visits."""

    skipped: int = 0
    continued: int = 0
    kept_proposal: int = 0
    forced_stops: int = 0
    visits: int = 0
    visits_accuracy: int = 0
    visits_diversity: int = 0
    visits_fairness: int = 0
    walks: list[list[dict[str, Any]]] = field(default_factory=list)
    """Each row's walk, step by step (node, answer, result): what the diagnosis shows."""

    def figures(self) -> dict[str, float]:
        answers, rows, per = self.outputs, max(self.rows, 1), max(self.users, 1)
        out = {k: v for k, v in super().figures().items() if k not in ("invalid_row_rate",)}
        out.update({
            "skipped_rate": self.skipped / answers if answers else 0.0,
            "continued_rate": self.continued / max(answers, 1),
            "kept_proposal_rate": self.kept_proposal / max(answers - self.invalid_outputs, 1),
            "forced_stop_rate": self.forced_stops / rows if self.rows else 0.0,
            "visits_per_user": self.visits / per if self.rows else 0.0,
            **{f"visits_{n}": getattr(self, f"visits_{n}") / rows for n in GOAL_NODES[:3]},
        })  # fmt: skip
        return out


class GoalReranker(Reranker[GoalConfig], LLMStage[GoalConfig]):
    config_class = GoalConfig

    def fit(self, ctx: FitContext) -> Self:
        super().fit(ctx)
        catalog = ctx.catalog
        self.style_ = self.prompt_style(catalog)
        self.catalog_ = catalog
        self.groups_ = year_groups(catalog, self.config.split_year)
        self.genres_ = catalog.genre_matrix
        return self

    def proposal(self, items: np.ndarray, w: Walk) -> list[int]:
        """The order this node's classical method makes of the walk's current result:
        accuracy restores the ranker's order; diversity (MMR) and fairness (fair exposure)
        reorder the current one, taking its positions as relevance, so a later aspect keeps
        what an earlier one did wherever it can."""
        if w.node == "accuracy":
            return list(range(w.n))
        rel = np.empty(w.n)
        rel[np.array(w.current)] = 1.0 - np.arange(w.n) / max(w.n - 1, 1)
        if w.node == "diversity":
            order = mmr_order(rel, cosine(self.genres_[items]), self.config.trade_off)
        else:
            order = fair_order(rel, self.groups_[items], self.config.target)
        return [int(j) for j in order]

    def _group_names(self, items: np.ndarray) -> list[str]:
        y = self.config.split_year
        return [f"from {y}" if g else f"before {y}" for g in self.groups_[items]]

    def _prompt(self, req: Request, items: np.ndarray, rel: np.ndarray, w: Walk) -> list[Message]:
        w.proposed = self.proposal(items, w) if self.config.propose else None
        return goal_prompt(
            self.catalog_, req.history, items.tolist(), w.current, rel.tolist(),
            self._group_names(items), w.results, w.node, self.goal_text(req), self.style_,
            w.proposed,
        )  # fmt: skip

    def goal_text(self, req: Request) -> str:
        """The request's own goal (a name in GOALS or a sentence), else the stage's."""
        goal = req.goal.strip() if req.goal else ""
        return GOALS.get(goal, goal) if goal else self.config.goal_text

    def _advance(self, walks: list[Walk]) -> None:
        """Move every walk sitting on backward/stop (no LLM call) or out of visits."""
        for w in walks:
            while not w.done:
                if w.visits >= self.config.max_visits:
                    w.done, w.forced = True, w.node != "stop"
                elif w.node == "stop":
                    w.done = True
                elif w.node == "backward":
                    w.visits += 1
                    w.steps.append({"node": "backward", "undone": bool(w.results)})
                    if w.results:
                        w.results.pop()
                    w.current = list(w.results[-1][1]) if w.results else list(range(w.n))
                    w.node = w.results[-1][0] if w.results else "accuracy"
                else:
                    break

    def rerank(self, requests: Sequence[Request], head: CandidateBatch) -> CandidateBatch:
        meter = self.meter()
        rows = [np.flatnonzero(head.items[r] != PAD) for r in range(len(head))]
        walks = [Walk(len(v), list(range(len(v)))) for v in rows]
        rels = [relevance(head.scores[r, v]) for r, v in enumerate(rows)]
        for w in walks:
            w.done = w.n == 0
        answers = invalid = skipped = 0
        while True:
            self._advance(walks)
            active = [r for r, w in enumerate(walks) if not w.done]
            if not active:
                break
            for lo in range(0, len(active), self.config.batch_size):
                chunk = active[lo : lo + self.config.batch_size]
                prompts = [
                    self._prompt(requests[r], head.items[r, rows[r]], rels[r], walks[r])
                    for r in chunk
                ]
                got = self._ask(prompts, [walks[r].n for r in chunk])
                retry: list[tuple[int, list[Message]]] = []
                for r, msgs, (text, cont) in zip(chunk, prompts, got, strict=True):
                    parsed = parse_goal_answer(text, walks[r].n, GOAL_NODES)
                    answers += 1
                    if parsed.errors:
                        invalid += 1
                        walks[r].steps.append({"node": walks[r].node, "answer": text,
                                               "errors": parsed.errors})  # fmt: skip
                        fix = (f"Your answer was invalid: {'; '.join(parsed.errors)}. Answer "
                               f"again in exactly the two-line format.")  # fmt: skip
                        retry.append((r, [*msgs[:-1], {"role": "assistant", "content": text},
                                          {"role": "user", "content": fix}, msgs[-1]]))  # fmt: skip
                    else:
                        self._apply(walks[r], parsed, text, reasked=False, continued=cont)
                if retry:
                    again = self._ask([m for _, m in retry], [walks[r].n for r, _ in retry])
                    for (r, _), (text, cont) in zip(retry, again, strict=True):
                        parsed = parse_goal_answer(text, walks[r].n, GOAL_NODES)
                        answers += 1
                        if parsed.errors:
                            invalid += 1
                            skipped += 1
                            w = walks[r]
                            w.steps.append({"node": w.node, "answer": text,
                                            "errors": parsed.errors, "skipped": True})  # fmt: skip
                            w.visits += 1
                            w.node = "stop"
                        else:
                            self._apply(walks[r], parsed, text, reasked=True, continued=cont)
        return self._finish(head, rows, walks, meter, answers, invalid, skipped)

    def _ask(self, prompts: list[list[Message]], sizes: list[int]) -> list[tuple[str, bool]]:
        """Whole answers. One that stops after its ranking line (small models close the list
        and ramble on, or count past the last id and are cut there) is continued from
        "Next:" with the node the model itself scores most likely among the graph's nodes
        (one forward pass, so never an unknown node). Each answer comes with whether it was
        continued (an extra call)."""
        texts = [""] * len(prompts)
        for n in sorted(set(sizes)):  # one stop set per list length
            idx = [i for i, m in enumerate(sizes) if m == n]
            got = self.llm.complete_many([prompts[i] for i in idx], max_tokens=4 * n + 24,
                                         stop=["\n\n", *_overrun(n)],
                                         template=PROMPT_VERSION)  # fmt: skip
            for i, a in zip(idx, got, strict=True):
                texts[i] = _answer(a.text)
        cut = [i for i, (t, n) in enumerate(zip(texts, sizes, strict=True))
               if parse_goal_answer(t, n, GOAL_NODES).errors == _ONLY_NEXT_MISSING]  # fmt: skip
        if cut:
            more = [[*prompts[i][:-1], {"role": "assistant", "content": _ranking_line(texts[i])
                                        + "\nNext:"}] for i in cut]  # fmt: skip
            options = [f" {node}" for node in GOAL_NODES]
            scored = self.llm.option_logprobs_many(more, options, PROMPT_VERSION)
            for i, sc in zip(cut, scored, strict=True):
                texts[i] = f"{_ranking_line(texts[i])}\nNext: {GOAL_NODES[sc.logprobs.argmax()]}"
        return [(t, i in cut) for i, t in enumerate(texts)]

    def _apply(self, w: Walk, parsed: GoalAnswer, text: str, reasked: bool,
               continued: bool) -> None:  # fmt: skip
        assert parsed.order is not None and parsed.next_node is not None
        # ids number the listed order: map them back to input positions
        order = parsed.order if w.proposed is None else [w.proposed[k] for k in parsed.order]
        w.visits += 1
        w.results.append((w.node, order))
        w.current = list(order)
        w.steps.append({"node": w.node, "answer": text, "result": order,
                        "next": parsed.next_node, "reasked": reasked, "continued": continued,
                        "proposed": w.proposed, "kept_proposal": w.proposed == order})  # fmt: skip
        w.node = parsed.next_node

    def _finish(
        self,
        head: CandidateBatch,
        rows: list[np.ndarray],
        walks: list[Walk],
        meter: Meter,
        answers: int,
        invalid: int,
        skipped: int,
    ) -> CandidateBatch:
        items, scores = head.items.copy(), head.scores.copy()
        fallback = np.zeros(len(head), dtype=bool)
        for r, (v, w) in enumerate(zip(rows, walks, strict=True)):
            if not w.results:  # nothing valid came back: the ranker's order stands
                fallback[r] = w.n > 0
                continue
            order = np.array(w.current)
            items[r, v] = head.items[r, v][order]
            scores[r, v] = -np.arange(len(order), dtype=np.float64)
        steps = [s for w in walks for s in w.steps]
        visits = {n: sum(1 for s in steps if s["node"] == n and "result" in s)
                  for n in GOAL_NODES[:3]}  # fmt: skip
        st = GoalStats(
            rows=len(head), users=len(head), fallback_rows=int(fallback.sum()), outputs=answers,
            invalid_outputs=invalid, skipped=skipped,
            continued=sum(bool(s.get("continued", False)) for s in steps),
            kept_proposal=sum(bool(s.get("kept_proposal", False)) for s in steps),
            forced_stops=sum(w.forced for w in walks), visits=sum(w.visits for w in walks),
            visits_accuracy=visits["accuracy"], visits_diversity=visits["diversity"],
            visits_fairness=visits["fairness"], walks=[w.steps for w in walks],
        )  # fmt: skip
        st.add_usage(meter.used)
        return CandidateBatch(items, scores, self.name, fallback, stats=st)
