"""Re-cut a stream of text pieces into words, grapheme clusters, or leave it as it comes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

import regex

T = TypeVar("T")

Granularity = Literal["word", "char", "chunk"]
GRANULARITIES: tuple[str, ...] = ("word", "char", "chunk")

# A word group: a word (UAX #29 default word boundaries: a Han or kana character is a word of its own, "can't"
# and "3.14" are one) and the spaces and punctuation after it, up to where the next word starts. Each
# group starts at a boundary before a word character, which later text cannot move (UAX #29 decides those
# from the character and what precedes it), so only the last group is held back.
# A word starts only where a grapheme cluster starts too: not before a mark that joins the character before it
# (a combining mark, a Thai or Devanagari vowel sign: UAX #29 word rules alone cut "น้ำ" before "ำ"), not after
# a Prepend character, not inside a Hangul syllable spelled in jamo (the grapheme rules GB6-GB9b that can apply
# where a word character follows).
_CLUSTER_START = (
    r"(?![\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}])(?<!\p{GCB=Prepend})"
    r"(?!(?<=\p{GCB=L})[\p{GCB=L}\p{GCB=V}\p{GCB=LV}\p{GCB=LVT}])"
    r"(?!(?<=[\p{GCB=LV}\p{GCB=V}])[\p{GCB=V}\p{GCB=T}])(?!(?<=[\p{GCB=LVT}\p{GCB=T}])\p{GCB=T})"
)
_WORD_START = rf"\b(?=\w){_CLUSTER_START}"
_WORD_GROUP = regex.compile(rf"(?ws){_WORD_START}.+?(?={_WORD_START}|\Z)")
# Left context for the boundary rules (at most a few characters back, e.g. "a'" before "b").
_WORD_CONTEXT = 16
# \X is an extended grapheme cluster (UAX #29): ZWJ emoji, flags, skin tones and combining marks stay whole.
_GRAPHEME = regex.compile(r"\X")


def _split_streaming(pieces: Iterable[str | T], pattern: regex.Pattern[str]) -> Iterator[str | T]:
    # The last match in the buffer may still grow when the next piece arrives (a word not yet followed
    # by whitespace, an emoji whose modifier is in the next token), so it is held back until then.
    pending = ""
    for piece in pieces:
        if not isinstance(piece, str):  # a marker (kit.pipeline.sources.Role) ends the text before it and passes
            if pending:
                yield from pattern.findall(pending)
            pending = ""
            yield piece
            continue
        pending += piece
        matches = pattern.findall(pending)
        if len(matches) < 2:
            continue
        yield from matches[:-1]
        pending = matches[-1]
    if pending:
        yield from pattern.findall(pending)


class WordSplitter:
    """Cuts a growing text into word groups; each piece costs one regex pass over itself and a little context,
    so splitting is linear in the text's length (see bench/bench_words.py), whatever the script."""

    def __init__(self) -> None:
        self._pending: list[str] = []  # the last group, still growing, as it arrived
        self._recent = ""  # the last characters fed, the left context of the next piece

    def feed(self, piece: str) -> list[str]:
        """Add a piece of text; return the groups it completed."""
        window = self._recent + piece
        starts = [match.start() for match in _WORD_GROUP.finditer(window, len(self._recent))]
        self._recent = window[-_WORD_CONTEXT:]
        if not starts:
            self._pending.append(piece)
            return []
        groups = [window[start:end] for start, end in zip(starts, [*starts[1:], len(window)], strict=True)]
        head = window[len(window) - len(piece) : starts[0]]  # before the first word start: the pending group's
        if self._pending:
            head = "".join(self._pending) + head
        self._pending = [groups.pop()]
        if head:
            groups.insert(0, head)
        return groups

    def finish(self) -> list[str]:
        """The held-back group, once no more text will come (or a marker ends the text)."""
        rest = "".join(self._pending)
        self._pending, self._recent = [], ""
        return [rest] if rest else []


def split_words(pieces: Iterable[str | T]) -> Iterator[str | T]:
    """Yield whole words by Unicode word boundaries (UAX #29), each with the spaces and punctuation after it;
    Chinese and Japanese stream a character at a time, Thai and Korean by their boundaries too.

    >>> list(split_words(["Hel", "lo, wor", "ld! 你好", "世界"]))
    ['Hello, ', 'world! ', '你', '好', '世', '界']
    """
    words = WordSplitter()
    for piece in pieces:
        if isinstance(piece, str):
            yield from words.feed(piece)
        else:  # a marker (kit.pipeline.sources.Role) ends the text before it and passes
            yield from words.finish()
            yield piece
    yield from words.finish()


def split_graphemes(pieces: Iterable[str]) -> Iterator[str]:
    """Yield user-perceived characters (grapheme clusters), never splitting one across pieces.

    >>> list(split_graphemes(["e\\u0301", "\\U0001F44D", "\\U0001F3FD!"])) == ["e\\u0301", "👍🏽", "!"]
    True
    """
    return _split_streaming(pieces, _GRAPHEME)


def pass_through(pieces: Iterable[str]) -> Iterator[str]:
    """Yield the pieces as they come."""
    return iter(pieces)


def splitter(granularity: str) -> Callable[[Iterable[str]], Iterator[str]]:
    """Return the splitter for a granularity name, or raise ValueError naming the valid ones."""
    splitters = {"word": split_words, "char": split_graphemes, "chunk": pass_through}
    try:
        return splitters[granularity]
    except KeyError:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}") from None
