"""RankGPT-style output repair, by hand and fuzzed."""

from hypothesis import given, settings
from hypothesis import strategies as st

from recfunnel.llm.parse import parse_permutation


def test_clean_answer_is_valid():
    p = parse_permutation("[3] > [1] > [2]", 3)
    assert p.order == [2, 0, 1] and not p.invalid and p.problems == []


def test_repairs_follow_rankgpt():
    p = parse_permutation("[2] > [2] > [9] > [0] > blah", 4)
    # 2 kept once, 9 and 0 out of range, then 1, 3, 4 appended in input order
    assert p.order == [1, 0, 2, 3]
    assert p.invalid
    assert any("repeated" in x for x in p.problems)
    assert any("unknown" in x for x in p.problems)
    assert any("missing 3" in x for x in p.problems)


def test_garbage_falls_back_to_input_order():
    p = parse_permutation("I think the user would like Toy Story!", 5)
    assert p.order == [0, 1, 2, 3, 4] and p.invalid


def test_huge_numbers_are_out_of_range():
    p = parse_permutation("9" * 500 + " [1]", 2)
    assert p.order == [0, 1] and p.invalid


@settings(max_examples=500, deadline=None)
@given(text=st.text(), n=st.integers(min_value=1, max_value=60))
def test_fuzz_always_a_permutation(text, n):
    """Whatever the model writes: no crash, only candidates, each exactly once."""
    p = parse_permutation(text, n)
    assert sorted(p.order) == list(range(n))


@settings(max_examples=200, deadline=None)
@given(perm=st.permutations(list(range(12))))
def test_fuzz_valid_answers_round_trip(perm):
    text = " > ".join(f"[{j + 1}]" for j in perm)
    p = parse_permutation(text, 12)
    assert p.order == list(perm) and not p.invalid
