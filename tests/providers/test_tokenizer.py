"""Counting long text a slice at a time gives the count of the whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.support.tokenizer import Tokenizer, slices


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


words = st.text(
    st.sampled_from(list("abcXYZ019.,'!-_é中😀\t\n")) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=12,
)
texts = st.lists(st.tuples(words, st.sampled_from([" ", "  ", "\n", " \n ", ""])), max_size=60).map(
    lambda parts: "".join(w + sep for w, sep in parts)
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text=texts, size=st.integers(4, 40))
def test_sliced_count_equals_whole_count(tokenizer: Tokenizer, text: str, size: int) -> None:
    pieces = list(slices(text, size))
    assert "".join(pieces) == text
    whole = len(tokenizer.encoding.encode_ordinary(text))
    at, clean = 0, True
    for piece in pieces[:-1]:
        at += len(piece)
        # A clean cut: before a space between two non-space characters.
        clean = clean and text[at] == " " and not text[at - 1].isspace()
        clean = clean and at + 1 < len(text) and not text[at + 1].isspace()
    if clean:
        assert sum(len(tokenizer.encoding.encode_ordinary(p)) for p in pieces) == whole


def test_count_of_a_long_text_is_exact(tokenizer: Tokenizer) -> None:
    text = "lorem ipsum dolor sit amet, consectetur 12345 élan 中文 😀\n" * 20_000
    assert tokenizer.count(text) == len(tokenizer.encoding.encode_ordinary(text))


def test_a_text_without_spaces_is_cut_anyway_within_a_token_per_cut(tokenizer: Tokenizer) -> None:
    text = "x" * 300_000
    pieces = list(slices(text))
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 64 * 1024
    assert abs(tokenizer.count(text) - len(tokenizer.encoding.encode_ordinary(text))) <= len(pieces)
