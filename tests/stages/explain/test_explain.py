"""Grounded explanations: the title finder and grounding check on hand-made reasons, and
the regenerate-once-then-template flow (counted) with a scripted model. The real bundled
model explains in tests/integration/test_rerank_real.py."""

import numpy as np
import pytest

from recfunnel.core.candidates import CandidateBatch
from recfunnel.core.errors import NotFittedError
from recfunnel.core.titles import TitleIndex, title_forms
from recfunnel.core.types import Catalog, Request
from recfunnel.llm import LLMPool
from recfunnel.stages.base import FitContext
from recfunnel.stages.explain.grounded import (
    ExplainConfig,
    Explainer,
    grounding_errors,
    template_reason,
)
from scripted import ScriptedLLM

CAT = Catalog.build(
    list(range(8)),
    [
        "Matrix, The (1999)",
        "Toy Story (1995)",
        "Heat (1995)",
        "Star Wars: Episode IV - A New Hope (1977)",
        "Fargo (1996)",
        "Jumanji (1995)",
        "Babe (1995)",
        "Grumpier Old Men (1995)",
    ],
    genres=[
        ("Action", "Sci-Fi"),
        ("Animation", "Comedy"),
        ("Crime",),
        ("Action", "Sci-Fi"),
        ("Crime", "Drama"),
        ("Adventure",),
        ("Comedy",),
        ("Comedy", "Romance"),
    ],
    years=[1999, 1995, 1995, 1977, 1996, 1995, 1995, 1995],
)
INDEX = TitleIndex(CAT)
HIST, CANDS = [0, 1], [3, 4, 5]


def test_title_forms_cover_year_and_moved_article():
    assert {"the matrix", "matrix the", "matrix"} <= title_forms("Matrix, The (1999)")
    assert "toy story" in title_forms("Toy Story (1995)")


NOT_LIKED = "names none of the user's liked"
CASES = [
    ("Because you liked The Matrix, Star Wars: Episode IV - A New Hope has space battles.", []),
    ("Because you liked Toy Story and the matrix (1999), Fargo fits.", []),
    ("Because you liked Jumanji, this is fun.", [NOT_LIKED]),
    ("Because you liked The Matrix and Grumpier Old Men.", ["'Grumpier Old Men (1995)', which"]),
    ('Because you liked "The Lost Galaxy" and Toy Story.', ["'The Lost Galaxy', which is not"]),
    ("Because you liked action movies.", [NOT_LIKED]),
]


@pytest.mark.parametrize("text, errors", CASES)
def test_grounding_check_on_hand_made_reasons(text, errors):
    got = grounding_errors(text, INDEX, HIST, CANDS)
    assert len(got) == len(errors)
    for e, g in zip(errors, got, strict=True):
        assert e in g


def test_short_single_word_titles_are_not_matched_in_prose():
    # "Heat" (4 letters) would match "the heat of the moment"; only quoted it counts
    assert grounding_errors("Because you liked Toy Story: feel the heat.", INDEX, HIST, CANDS) == []
    assert grounding_errors('Because you liked Toy Story and "Heat".', INDEX, HIST, CANDS)


def test_template_reason_names_history_items_sharing_genres():
    text = template_reason(CAT, 3, [1, 0, 2])
    assert (
        text == "Because you liked Matrix, The (1999): "
        "Star Wars: Episode IV - A New Hope (1977) is also Action and Sci-Fi."
    )
    assert not grounding_errors(text, INDEX, [1, 0, 2], [3], item=3)
    # nothing shared: a plain popularity reason that names no liked title at all
    assert template_reason(CAT, 5, [2]) == (
        "Jumanji (1995) is an Adventure title popular with viewers like you."
    )
    assert template_reason(CAT, 5, []) == template_reason(CAT, 5, [2])


def test_template_reason_claims_only_genres_the_named_titles_share():
    # Fargo is Crime, Drama; of the history only Heat (Crime) shares a genre with it:
    # the reason names Heat and Crime, never Toy Story and never Drama
    assert (
        template_reason(CAT, 4, [2, 1])
        == "Because you liked Heat (1995): Fargo (1996) is also Crime."
    )
    # Grumpier Old Men is Comedy, Romance: Babe and Toy Story are both Comedy, so both
    # are named, with the one genre each of them has
    text = template_reason(CAT, 7, [1, 6])
    assert (
        text == "Because you liked Babe (1995) and Toy Story (1995): "
        "Grumpier Old Men (1995) is also Comedy."
    )
    assert not grounding_errors(text, INDEX, [1, 6], [7], item=7)


def test_grounding_check_catches_false_genre_and_year_claims():
    # the old template's wording: Toy Story is no Action film
    wrong = (
        "Because you liked Toy Story (1995): "
        "Star Wars: Episode IV - A New Hope (1977) is also Action, Sci-Fi."
    )
    errs = grounding_errors(wrong, INDEX, [1], [3], item=3)
    assert any("'Action' shared, but Toy Story (1995) is not Action" in e for e in errs)
    assert any("'Sci-Fi' shared" in e for e in errs)
    # the candidate itself must have the genre too
    errs = grounding_errors(
        "Because you liked Toy Story (1995): Jumanji is also Comedy.", INDEX, [1], [5], item=5
    )
    assert errs == ["it calls 'Comedy' shared, but Jumanji (1995) is not Comedy"]
    # a year written after a title is that title's
    errs = grounding_errors("Because you liked Toy Story (1997).", INDEX, [1], [5])
    assert errs == ["it dates 'Toy Story' 1997, but the catalog says 1995"]
    assert grounding_errors("Because you liked Toy Story (1995).", INDEX, [1], [5]) == []


def explainer(script, **kw):
    llm = ScriptedLLM(text=script)
    ctx = FitContext(None, CAT, 0, LLMPool(override=llm))
    return Explainer(ExplainConfig(top_k=2, **kw)).fit(ctx), llm


REQS = [Request(0, np.array(HIST))]
RANKED = CandidateBatch(np.array([[3, 4, 5]]), np.array([[3.0, 2.0, 1.0]]), "final")


def test_grounded_answers_are_kept_and_counted():
    ex, llm = explainer(lambda p: " The Matrix. It is a classic too. And more")
    (row,), st = ex.explain(REQS, RANKED)
    assert [e.item for e in row] == [3, 4] and len(llm.prompts) == 2
    assert row[0].text == "Because you liked The Matrix."  # first sentence, prefill kept
    assert all(e.source == "llm" for e in row)
    assert st.figures()["grounded_rate"] == 1.0 and st.figures()["llm_rate"] == 1.0


def test_rejected_reason_is_regenerated_once_with_its_error_then_templated():
    def script(p):
        if "not allowed" in p:  # the re-ask names the bad title
            assert "'Grumpier Old Men (1995)'" in p
            return " Toy Story." if "Fargo" in p.split("Recommended")[1] else " Grumpier Old Men."
        return " Grumpier Old Men, you will like it."

    ex, llm = explainer(script)
    (row,), st = ex.explain(REQS, RANKED)
    assert len(llm.prompts) == 4
    by_item = {e.item: e for e in row}
    assert by_item[4].source == "regenerated" and by_item[4].text == "Because you liked Toy Story."
    assert by_item[3].source == "template" and "Matrix" in by_item[3].text
    assert not grounding_errors(by_item[3].text, INDEX, HIST, [3], item=3)
    s = st.figures()
    assert s["regenerated_rate"] == 0.5 and s["template_rate"] == 0.5
    assert s["first_rejected_rate"] == 1.0 and s["grounded_rate"] == 0.5
    assert s["template_grounded_rate"] == 1.0
    # 4 answers, 3 of them rejected (both first answers, then item 3's second)
    assert st.outputs == 4 and s["invalid_rate"] == 0.75


def test_llm_reason_claiming_a_false_shared_genre_is_rejected():
    # The Matrix is Action, Sci-Fi; Fargo is Crime, Drama: "also Action" is false of Fargo
    ex, _llm = explainer(lambda p: " The Matrix: Fargo is also Action.")
    (row,), st = ex.explain(REQS, CandidateBatch(np.array([[4]]), np.array([[1.0]]), "final"))
    assert row[0].source == "template" and "'Action' shared" in " ".join(row[0].errors)
    assert st.figures()["invalid_rate"] == 1.0


def test_empty_history_gets_a_template_without_asking():
    ex, llm = explainer(lambda p: pytest.fail("no LLM call for an empty history"))
    (row,), st = ex.explain([Request(0, np.array([], dtype=np.int64))], RANKED)
    assert all(e.source == "template" for e in row) and not llm.prompts
    assert st.llm_calls == 0 and st.template == len(row) == 2


def test_explain_needs_fit_and_matching_rows():
    with pytest.raises(NotFittedError, match="fit"):
        Explainer(ExplainConfig()).explain(REQS, RANKED)
    ex, _ = explainer(str)
    with pytest.raises(ValueError, match="2 requests for 1 rankings"):
        ex.explain(REQS * 2, RANKED)


def test_max_requests_explains_a_sample():
    ex, llm = explainer(lambda p: " The Matrix.", max_requests=1)
    two = CandidateBatch(np.vstack([RANKED.items] * 2), np.vstack([RANKED.scores] * 2), "final")
    rows, st = ex.explain(REQS * 2, two)
    assert [len(r) for r in rows] == [2, 0] and len(llm.prompts) == 2
    assert st.figures()["explained"] == 2
