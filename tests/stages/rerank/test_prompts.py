"""Each prompt template renders what it promises."""

import numpy as np
import pytest

from recfunnel.core.types import Catalog
from recfunnel.llm.base import render_chat
from recfunnel.stages.rerank.prompts import (
    LABELS,
    permutation_prompt,
    pointwise_prompt,
    verbalizer_prompt,
)
from recfunnel.stages.text import PromptStyle, history_block, item_line

CAT = Catalog.build(
    [10, 11, 12, 13],
    ["Heat (1995)", "A Very Long Title That Goes On And On Forever", "Alien", "Up"],
    genres=[("Crime", "Thriller"), ("Drama",), ("Horror", "Sci-Fi"), ()],
    years=[1995, 2001, 1979, None],
)
STYLE = PromptStyle(noun="movie", history_items=2, title_chars=20)


def test_item_line_truncates_and_adds_year_once():
    assert item_line(CAT, 0, STYLE) == "Heat (1995) — Crime, Thriller"
    assert item_line(CAT, 1, STYLE) == "A Very Long Title T… (2001) — Drama"
    assert item_line(CAT, 2, STYLE) == "Alien (1979) — Horror, Sci-Fi"
    assert item_line(CAT, 3, STYLE) == "Up"


def test_history_newest_first_and_truncated():
    block = history_block(CAT, np.array([0, 1, 2]), STYLE)
    lines = block.splitlines()
    assert lines[0].startswith("Movies the user liked, most recent first")
    assert lines[1].startswith("- Alien") and lines[2].startswith("- A Very")
    assert len(lines) == 3  # history_items = 2
    assert "not rated any movies" in history_block(CAT, np.array([], dtype=int), STYLE)


def test_verbalizer_prompt_labels():
    msgs, labels = verbalizer_prompt(CAT, np.array([0]), [2, 3], STYLE)
    assert labels == ["A", "B"]
    user = msgs[-1]["content"]
    assert "A. Alien (1979)" in user and "B. Up" in user and "letter only" in user
    with pytest.raises(ValueError):
        verbalizer_prompt(CAT, np.array([0]), list(range(len(LABELS) + 1)), STYLE)


def test_prev_rank_shown_only_when_asked():
    shown = PromptStyle(noun="movie", show_prev_rank=True)
    msgs, _ = verbalizer_prompt(CAT, np.array([0]), [2, 3], shown, [0, 1])
    assert "(ranker's rank: 1)" in msgs[-1]["content"]
    msgs, _ = verbalizer_prompt(CAT, np.array([0]), [2, 3], STYLE, [0, 1])
    assert "ranker's rank" not in msgs[-1]["content"]


def test_permutation_and_pointwise_prompts():
    user = permutation_prompt(CAT, np.array([0]), [2, 3, 1], STYLE)[-1]["content"]
    assert "[1] Alien" in user and "[3] A Very" in user and "[2] > [1] > [3]" in user
    user = pointwise_prompt(CAT, np.array([0]), 2, STYLE)[-1]["content"]
    assert "Alien (1979)" in user and "Yes or No" in user


def test_render_chat_template_and_open_prefix():
    tpl = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Answer:"}]
    assert render_chat(msgs, tpl) == "<|user|>hi<|end|><|assistant|>Answer:"
    assert render_chat(msgs[:1], None) == "User: hi\n\nAssistant: "
