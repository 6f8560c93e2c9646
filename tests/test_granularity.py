import itertools

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from kit.pipeline.granularity import pass_through, split_graphemes, split_words, splitter

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


def test_words_keep_the_whitespace_and_punctuation_after_them() -> None:
    assert list(split_words(["  Hel", "lo\n", "\nwor", "ld  ", "!"])) == ["  ", "Hello\n\n", "world  !"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("你好，世界。", ["你", "好，", "世", "界。"]),  # noqa: RUF001 (a Han character is a word)
        ("こんにちは、カタカナです", ["こ", "ん", "に", "ち", "は、", "カタカナ", "で", "す"]),
        ("안녕하세요 세계", ["안녕하세요 ", "세계"]),
        ("สวัสดี ครับ", ["ส", "วั", "ส", "ดี ", "ค", "รั", "บ"]),  # no dictionary: Thai by its boundaries
        ("can't stop at 3.14, e-mail", ["can't ", "stop ", "at ", "3.14, ", "e-", "mail"]),
    ],
)
def test_every_script_streams_word_by_word_even_fed_a_character_at_a_time(text: str, words: list[str]) -> None:
    assert list(split_words([text])) == words
    assert list(split_words(list(text))) == words


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
def test_word_stream_round_trips_and_only_cuts_at_word_boundaries(text: str, cuts: list[int]) -> None:
    out = list(split_words(cut(text, cuts)))
    assert "".join(out) == text and all(out)
    # every cut is a word boundary of the whole text (UAX #29), and the pieces do not depend on the feeding
    assert boundaries(out) <= boundaries(regex.split(r"(?w)\b", text))
    assert out == list(split_words([text]))
    # every word but the first starts with a word character: what follows a word stays attached to it
    assert not any(regex.match(r"\W", word) for word in out[1:])


@given(pieces=st.lists(st.text(max_size=20), max_size=20))
def test_chunk_passes_pieces_through(pieces: list[str]) -> None:
    assert list(pass_through(pieces)) == pieces


def test_words_never_cut_inside_a_grapheme_cluster_thai_vowel_signs_stay_with_their_consonant() -> None:
    # UAX #29 word rules alone put a boundary between "น้" and "ำ" (SARA AM), inside one grapheme cluster.
    assert list(split_words(["น้ำใจ"])) == ["น้ำ", "ใ", "จ"]
    assert list(split_words(list("น้ำใจ"))) == ["น้ำ", "ใ", "จ"]


mixed_scripts = st.lists(
    st.sampled_from(["น้ำ", "ใจ", "ที่", "ดี ", "e\u0301", "ก\u0e31", "नमस्ते ", "👍🏽", "日本", "word ", "ำ", "\u0301"]),
    max_size=30,
).map("".join)


@given(text=mixed_scripts | text_strategy, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_word_pieces_are_whole_grapheme_clusters_however_the_text_is_fed(text: str, cuts: list[int]) -> None:
    out = list(split_words(cut(text, cuts)))
    assert "".join(out) == text
    assert boundaries(out) <= boundaries(clusters(text))
