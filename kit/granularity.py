"""Re-cut a stream of text pieces into words, grapheme clusters, or leave it as it comes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

import regex

T = TypeVar("T")

Granularity = Literal["word", "char", "chunk"]
GRANULARITIES: tuple[str, ...] = ("word", "char", "chunk")

# A word keeps the whitespace that follows it, so joining the words gives back the exact text;
# whitespace before the first word is a piece of its own.
_WORD = regex.compile(r"^\s+|\S+\s*")
# \X is an extended grapheme cluster (UAX #29): ZWJ emoji, flags, skin tones and combining marks stay whole.
_GRAPHEME = regex.compile(r"\X")


def _split_streaming(pieces: Iterable[str | T], pattern: regex.Pattern[str]) -> Iterator[str | T]:
    # The last match in the buffer may still grow when the next piece arrives (a word not yet followed
    # by whitespace, an emoji whose modifier is in the next token), so it is held back until then.
    pending = ""
    for piece in pieces:
        if not isinstance(piece, str):  # a marker (kit.sources.Role) ends the text before it and passes
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


def split_words(pieces: Iterable[str]) -> Iterator[str]:
    """Yield whole words, each with its trailing whitespace.

    >>> list(split_words(["Hel", "lo wor", "ld!  "]))
    ['Hello ', 'world!  ']
    """
    return _split_streaming(pieces, _WORD)


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
