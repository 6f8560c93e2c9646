import itertools

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from kit.granularity import pass_through, split_graphemes, split_words, splitter

TRICKY = [
    "👩‍👩‍👧‍👦",  # ZWJ family
    "🇯🇵🇫🇷",  # two flags (regional indicator pairs)
    "👍🏽",  # skin tone modifier
    "e\u0301\u0323",  # letter with two combining marks
    "日本語",
    "مرحبا",
    "नमस्ते",
    "\r\n",
]


def clusters(text: str) -> list[str]:
    return regex.findall(r"\X", text)


def boundaries(parts: list[str]) -> set[int]:
    offsets, position = set(), 0
    for part in parts:
        position += len(part)
        offsets.add(position)
    return offsets


def cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("sample", TRICKY)
def test_char_split_never_breaks_a_cluster_even_when_tokens_cut_it_codepoint_by_codepoint(sample: str) -> None:
    assert list(split_graphemes(list(sample))) == clusters(sample)


def test_words_keep_whitespace() -> None:
    assert list(split_words(["  Hel", "lo\n", "\nwor", "ld  ", "!"])) == ["  ", "Hello\n\n", "world  ", "!"]


def test_unknown_granularity_names_the_choices() -> None:
    with pytest.raises(ValueError, match="word"):
        splitter("sentence")


text_strategy = st.lists(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=5) | st.sampled_from(TRICKY), max_size=40
).map("".join)


@given(text=text_strategy, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_char_stream_round_trips_and_only_cuts_at_cluster_boundaries(text: str, cuts: list[int]) -> None:
    out = list(split_graphemes(cut(text, cuts)))
    assert "".join(out) == text
    assert boundaries(out) <= boundaries(clusters(text))
    assert all(out)


@given(text=text_strategy, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_word_stream_round_trips(text: str, cuts: list[int]) -> None:
    out = list(split_words(cut(text, cuts)))
    assert "".join(out) == text
    # every word but the first starts with a non-space: whitespace stays attached to the word before it
    assert not any(regex.match(r"\s", word) for word in out[1:])


@given(pieces=st.lists(st.text(max_size=20), max_size=20))
def test_chunk_passes_pieces_through(pieces: list[str]) -> None:
    assert list(pass_through(pieces)) == pieces
