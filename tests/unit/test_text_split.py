"""`split_text`: long text into pieces of whole sentences, each within the size limit."""
from __future__ import annotations

import random
import re

import pytest

from editx.errors import InvalidInputError
from editx.frontend.text_split import split_text


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_sentences_are_packed_and_never_cut_when_they_fit():
    text = "One two. Three four five! Six?\nSeven; eight… Nine."
    assert split_text(text, 1000) == ["One two. Three four five! Six? Seven; eight… Nine."]
    assert split_text(text, 17) == ["One two.", "Three four five!", "Six? Seven;", "eight… Nine."]


def test_closing_quotes_stay_with_their_sentence_and_cjk_needs_no_spaces():
    assert split_text('He said "stop." Then left.', 16) == ['He said "stop."', "Then left."]
    assert split_text("你好。我很好！你呢？“好的。”最后一句", 8) == ["你好。我很好！", "你呢？“好的。”", "最后一句"]


def test_long_sentences_fall_back_to_clauses_words_and_hard_cuts():
    assert split_text("alpha beta, gamma delta, epsilon zeta.", 14) == ["alpha beta,", "gamma delta,", "epsilon zeta."]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert split_text("一二三四五六七八九十一二", 8) == ["一二三四五六七八", "九十一二"]


@pytest.mark.parametrize("seed", range(6))
def test_random_text_keeps_every_character_in_order_within_the_limit(seed):
    rng = random.Random(seed)
    words = ["a", "bb", "ccc", "dddddddddddd", "你好", "。", "！", ",", "e.", "f?", "\n", "g;", "“h.”"]
    text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 300)))
    limit = rng.choice([8, 13, 50, 301])
    pieces = split_text(text, limit)
    assert all(0 < len(p) <= limit and p == p.strip() for p in pieces)
    assert squash("".join(pieces)) == squash(text)


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="max_chars"):
        split_text("Hello.", 3)
    with pytest.raises(InvalidInputError, match="text"):
        split_text(None, 100)
    assert split_text(" \n ", 100) == []
