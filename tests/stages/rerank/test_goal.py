"""The goal-driven graph walker with a scripted model: node order, history pool, goal,
visit limit, backward, and invalid answers re-asked once then skipped (and counted).
The real bundled model walks the graph in tests/integration/test_rerank_real.py."""

import re

import numpy as np
import pytest

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.types import Catalog, Request
from recfunnel.llm import LLMPool
from recfunnel.llm.parse import parse_goal_answer
from recfunnel.stages.base import FitContext
from recfunnel.stages.rerank.goal import GoalConfig, GoalReranker
from recfunnel.stages.rerank.prompts import GOAL_NODES
from scripted import ScriptedLLM

CAT = Catalog.build(list(range(12)), [f"Movie {i}" for i in range(12)],
                    genres=[("Drama",)] * 6 + [("Comedy",)] * 6,
                    years=[1980] * 6 + [2005] * 6)  # fmt: skip
N = 6


def head(rows=2):
    items = np.array([[0, 1, 2, 6, 7, 8]] * rows)
    return CandidateBatch(items, -np.arange(N, dtype=float)[None].repeat(rows, 0), "mf")


def walker(script, **kw):
    """The walk's mechanics are tested on LLM4Rerank's bare prompt (ids = input positions);
    the proposals on top of it have their own tests below."""
    llm = ScriptedLLM(text=script)
    r = GoalReranker(GoalConfig(**{"propose": False, **kw})).fit(
        FitContext(None, CAT, 0, LLMPool(override=llm))
    )
    return r, llm


def focus(prompt):
    return re.search(r"Now focus on (\w+)", prompt).group(1)


def user_turns(prompt):
    return prompt.count("Your answer was invalid")


REQS = [Request(0, np.array([3, 4])), Request(1, np.array([9]))]


def test_walk_follows_next_nodes_and_keeps_the_history_pool():
    def script(p):
        if focus(p) == "accuracy":
            return "Ranking: 1, 2, 3, 4, 5, 6\nNext: diversity"
        assert "Focus: accuracy. Result: [1, 2, 3, 4, 5, 6]" in p  # the history pool
        return "Ranking: 1, 4, 2, 5, 3, 6\nNext: stop"

    r, llm = walker(script, goal="accuracy+diversity")
    out = r.rerank(REQS, head())
    assert out.items[0].tolist() == [0, 6, 1, 7, 2, 8]
    assert [s["node"] for s in out.stats.walks[0]] == ["accuracy", "diversity"]
    assert "different genres" in llm.prompts[0]  # the goal sentence is in every prompt
    assert len(llm.prompts) == 4 and out.stats.figures()["visits_per_user"] == 2
    assert out.stats.figures()["invalid_rate"] == 0 and not out.fallback.any()


def test_visit_limit_forces_a_stop():
    r, llm = walker(lambda p: "Ranking: 6, 5, 4, 3, 2, 1\nNext: fairness", max_visits=3)
    out = r.rerank(REQS, head())
    assert len(llm.prompts) == 2 * 3
    assert out.stats.figures()["forced_stop_rate"] == 1.0
    assert out.items[0].tolist() == [8, 7, 6, 2, 1, 0]


def test_backward_undoes_the_last_result():
    def script(p):
        pool = p.count("Focus: ")
        if pool == 0:
            return "Ranking: 2, 1, 3, 4, 5, 6\nNext: diversity"
        if focus(p) == "diversity":
            return "Ranking: 6, 5, 4, 3, 2, 1\nNext: backward"
        return "Ranking: 2, 1, 3, 4, 5, 6\nNext: stop"

    r, _ = walker(script)
    out = r.rerank(REQS, head())
    nodes = [s["node"] for s in out.stats.walks[0]]
    assert nodes == ["accuracy", "diversity", "backward", "accuracy"]
    assert out.items[0].tolist() == [1, 0, 2, 6, 7, 8]


@pytest.mark.parametrize(
    "bad, error",
    [
        ("Ranking: 1, 2, 3, 4, 5, 9\nNext: stop", "unknown id"),
        ("Ranking: 1, 2, 3, 4, 5\nNext: stop", "missing id"),
        ("Ranking: 1, 2, 3, 4, 5, 6, 6\nNext: stop", "7 ids instead of 6"),
        ("Ranking: 1, 2, 3, 4, 5, 6\nNext: novelty", "unknown next node"),
        ("I think the user likes movie 3.", "missing id"),  # read after the prefill
    ],
)
def test_invalid_answer_is_reasked_once_with_the_specific_error(bad, error):
    def script(p):
        return "Ranking: 3, 2, 1, 4, 5, 6\nNext: stop" if user_turns(p) else bad

    r, llm = walker(script)
    out = r.rerank(REQS, head())
    assert error in llm.prompts[-1]  # the re-ask names what was wrong
    assert out.items[0].tolist() == [2, 1, 0, 6, 7, 8]
    assert out.stats.walks[0][-1]["reasked"] is True
    assert out.stats.figures()["invalid_rate"] == 0.5 and out.stats.figures()["skipped_rate"] == 0


def test_twice_invalid_node_is_skipped_and_the_input_order_kept():
    r, llm = walker(lambda p: "Ranking: 1, 1, 1\nNext: maybe")
    out = r.rerank(REQS, head())
    assert len(llm.prompts) == 2 * 2  # one ask + one re-ask per user, then the node is skipped
    assert out.items.tolist() == head().items.tolist()
    assert out.fallback.all()
    s = out.stats.figures()
    assert s["invalid_rate"] == 1.0 and s["skipped_rate"] == 0.5 and s["fallback_rate"] == 1.0
    assert out.stats.walks[0][-1]["skipped"] is True


def test_answer_cut_after_its_ranking_gets_the_models_most_likely_node():
    """Small models close the list and ramble: the walker continues from "Next:" and takes
    the node the model scores highest, so the walk goes on instead of being re-asked."""

    def logprobs(p, options):
        assert p.rstrip().endswith("Ranking: [3, 2, 1, 4, 5, 6]\nNext:")
        assert list(options) == [f" {n}" for n in GOAL_NODES]
        return np.array([-3.0, -2.0, -0.1, -4.0, -5.0])  # fairness

    def script(p):
        if "Focus: accuracy" in p:
            return "Ranking: 1, 2, 3, 4, 5, 6\nNext: stop"
        return "3, 2, 1, 4, 5, 6]\n\nThe user will like these."  # continues "Ranking: ["

    llm = ScriptedLLM(text=script, logprobs=logprobs)
    r = GoalReranker(GoalConfig(propose=False)).fit(FitContext(None, CAT, 0, LLMPool(override=llm)))
    out = r.rerank(REQS, head())
    step = out.stats.walks[0][0]
    assert step["answer"] == "Ranking: [3, 2, 1, 4, 5, 6]\nNext: fairness"
    assert step["next"] == "fairness" and not step["reasked"]
    assert [s["node"] for s in out.stats.walks[0]] == ["accuracy", "fairness"]
    assert out.stats.figures()["invalid_rate"] == 0 and out.stats.figures()["continued_rate"] == 0.5
    assert step["continued"] and not out.stats.walks[0][1]["continued"]
    assert llm.prompts[0].rstrip().endswith("Ranking: [")  # the prefill opens every answer


def test_counting_past_the_last_id_is_cut_there_and_continued():
    """SmolLM2 asked for ids 1..6 writes "1, 2, …, 6, 7, 8": generation stops at ", 7"."""
    llm = ScriptedLLM(text=lambda p: "1, 2, 3, 4, 5, 6, 7, 8, 9]\nNext: stop",
                      logprobs=lambda p, o: np.array([-5.0, -5.0, -5.0, -5.0, -0.1]))  # fmt: skip
    r = GoalReranker(GoalConfig()).fit(FitContext(None, CAT, 0, LLMPool(override=llm)))
    out = r.rerank(REQS, head())
    assert out.items.tolist() == head().items.tolist() and not out.fallback.any()
    assert out.stats.figures()["invalid_rate"] == 0 and out.stats.figures()["continued_rate"] == 1.0
    assert out.stats.walks[0][0]["answer"] == "Ranking: [1, 2, 3, 4, 5, 6]\nNext: stop"


def test_parser_accepts_only_full_rankings_and_known_nodes():
    ok = parse_goal_answer("ranking: 2,1,3\nnext: Fairness", 3, GOAL_NODES)
    assert ok.order == [1, 0, 2] and ok.next_node == "fairness" and not ok.errors
    assert parse_goal_answer("Ranking: 2, 2, 3\nNext: stop", 3, GOAL_NODES).order is None


def copy_listed(next_by_node):
    """A model that copies the order it is shown (what the 135M model does)."""

    def script(p):
        ids = re.findall(r"^(\d+)\. Movie", p, re.MULTILINE)
        return f"Ranking: {', '.join(ids)}\nNext: {next_by_node[focus(p)]}"

    return script


def test_nodes_propose_their_classical_order_and_the_goal_acts_through_the_path():
    """Accuracy lists the ranker's order, diversity MMR of the current result, fairness
    fair exposure of it: a model that copies ends where its chosen nodes lead."""
    r, llm = walker(copy_listed({"accuracy": "diversity", "diversity": "stop"}), propose=True)
    out = r.rerank(REQS, head())
    assert "order proposed for diversity" in llm.prompts[2]  # 2 users per batch
    # Drama 0,1,2 then Comedy 6,7,8: MMR (λ .7) breaks the Drama run with the best Comedy;
    # once both genres are picked every item is fully similar, so relevance decides
    assert out.items[0].tolist() == [0, 6, 1, 2, 7, 8]
    assert (
        out.stats.walks[0][1]["kept_proposal"] and out.stats.figures()["kept_proposal_rate"] == 1.0
    )

    r, _ = walker(
        copy_listed({"accuracy": "fairness", "fairness": "stop"}), propose=True, target=0.5
    )
    out = r.rerank(REQS, head())  # years: 0,1,2 before 1996, 6,7,8 after
    assert out.items[0].tolist() == [0, 6, 1, 7, 2, 8]

    r, _ = walker(copy_listed({"accuracy": "stop"}), propose=True)
    assert r.rerank(REQS, head()).items.tolist() == head().items.tolist()


def test_proposal_ids_number_the_listed_order_and_map_back():
    """At a proposing node id k is the k-th listed candidate, in the answer and in the
    history pool alike: "1, 2, 3, …" accepts the proposal, and an edit maps back."""

    def script(p):
        if focus(p) == "accuracy":
            return "Ranking: 1, 2, 3, 4, 5, 6\nNext: diversity"
        # listed (MMR): input 1,4,2,3,5,6 (items 0,6,1,2,7,8); pool shown in these ids
        assert "Focus: accuracy. Result: [1, 3, 4, 2, 5, 6]" in p
        assert re.findall(r"^(\d+)\. (Movie \d+)", p, re.MULTILINE)[:2] == [
            ("1", "Movie 0"),
            ("2", "Movie 6"),
        ]
        return "Ranking: 2, 1, 3, 4, 5, 6\nNext: stop"  # swap the first two listed

    r, _ = walker(script, propose=True)
    out = r.rerank(REQS, head())
    assert out.items[0].tolist() == [6, 0, 1, 2, 7, 8]
    assert out.stats.walks[0][1]["result"] == [3, 0, 1, 2, 4, 5]  # input positions
    assert not out.stats.walks[0][1]["kept_proposal"]


def test_without_proposals_a_copying_model_returns_its_input():
    r, llm = walker(copy_listed({"accuracy": "diversity", "diversity": "stop"}), propose=False)
    assert r.rerank(REQS, head()).items.tolist() == head().items.tolist()
    assert "current order" in llm.prompts[0]
