"""Neutralise dangerous link schemes (`javascript:`, `vbscript:`, non-image `data:`) in streamed text.

Deep Chat renders markdown with any link scheme allowed, so a model that writes `[x](javascript:...)`
produces a live link. This stage rewrites such a scheme to a harmless one wherever the text puts it in
a link position: a markdown link or image destination, a reference definition, an autolink, or an HTML
attribute value. Prose that merely mentions "JavaScript:" is left alone.

It works on a stream: a scheme cut across two pieces (`"[x](java"`, `"script:alert(1))"`) is still
caught, because the tail of a piece is held back only while it could still grow into a dangerous link.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import regex

from kit.pipeline.pump import close_iterator

T = TypeVar("T")

# What replaces the scheme: a link to an empty page, saying why.
BLOCKED = "about:blank#blocked:"

# Images may keep these data: URLs (the list markdown-it trusts); any other data: URL is neutralised.
_SAFE_DATA = regex.compile(r"image/(?:gif|png|jpeg|webp)[;,]", regex.IGNORECASE)
_SAFE_DATA_LOOKAHEAD = len("image/jpeg;")

# A browser drops leading C0 controls and spaces from a URL, and tabs and newlines anywhere in it;
# markdown decodes character references in link destinations. Both may hide a scheme, so both count.
# A raw space is not here: it ends a markdown destination (spaces inside `<...>` are in the context).
_IGNORABLE = r"(?:[\x00-\x1f]|&\#0*(?:[0-9]|[12][0-9]|3[0-2]);|&\#x0*(?:[0-9a-f]|1[0-9a-f]|20);|&(?:tab|newline);)"
_COLON = r"(?::|&\#0*58;|&\#x0*3a;|&colon;|\\:)"
# Where a scheme becomes a link: `](` (inline link or image) and `]:` (reference definition), each with
# optional space and `<`; `<` (autolink); `=` (an HTML attribute value, for pages that render HTML).
# The possessive `*+` keeps a long run of spaces linear to scan.
_CONTEXT = r"(?P<context>\](?:\(|:)\s*+(?:<\s*+)?|=[\"']?|<)"


def _letter(char: str) -> str:
    code = ord(char)
    return f"(?:{char}|&\\#0*{code};|&\\#x0*{code:x};)"


def _scheme(name: str) -> str:
    letters = f"{_IGNORABLE}*".join(_letter(char) for char in name)
    return f"(?P<{name}>{_IGNORABLE}*{letters}{_IGNORABLE}*{_COLON})"


_DANGEROUS = regex.compile(
    _CONTEXT + "(?P<url>" + "|".join(_scheme(name) for name in ("javascript", "vbscript", "data")) + ")",
    regex.IGNORECASE,
)

# A tail that is still undecided after this many characters is treated as dangerous: only a deliberate
# obfuscation (thousands of ignorable characters) gets this far, and holding it longer would stall the stream.
MAX_HELD_CHARS = 1024


def _scan(text: str, final: bool) -> tuple[str, str]:
    """Split `text` into (safe text to send now, tail to hold until more text arrives)."""
    out: list[str] = []
    pos = 0
    while True:
        match = _DANGEROUS.search(text, pos, partial=not final)
        if match is None:
            out.append(text[pos:])
            return "".join(out), ""
        if match.partial:
            if len(text) - match.start() <= MAX_HELD_CHARS:
                out.append(text[pos : match.start()])
                return "".join(out), text[match.start() :]
            # Undecided for too long: break the link position and move on.
            out.append(text[pos : match.end("context")] + BLOCKED + text[match.end("context") :])
            return "".join(out), ""
        if match.group("data") is not None:
            verdict = _data_verdict(text[match.end() : match.end() + _SAFE_DATA_LOOKAHEAD], final)
            if verdict == "wait":
                out.append(text[pos : match.start()])
                return "".join(out), text[match.start() :]
            if verdict == "safe":
                out.append(text[pos : match.end()])
                pos = match.end()
                continue
        out.append(text[pos : match.start("url")] + BLOCKED)
        pos = match.end()


def _data_verdict(after_colon: str, final: bool) -> str:
    safe = _SAFE_DATA.match(after_colon, partial=not final)
    if safe is None:
        return "unsafe"
    return "wait" if safe.partial else "safe"


def neutralize_links(pieces: Iterable[str | T]) -> Iterator[str | T]:
    """Yield the pieces with dangerous link schemes replaced by `about:blank#blocked:`.

    Text is held back only while it could still become a dangerous link, and only that part of it.
    Anything that is not text (a `kit.pipeline.sources.Role` marker) ends the held text and passes as it is.

    >>> "".join(neutralize_links(["See [docs](https://x.org) or [this](java", "script:alert(1))"]))
    'See [docs](https://x.org) or [this](about:blank#blocked:alert(1))'
    >>> list(neutralize_links(["JavaScript: a language. ", "<b>bold</b>"]))
    ['JavaScript: a language. ', '<b>bold</b>']
    """
    held = ""
    iterator = iter(pieces)
    try:
        for piece in iterator:
            if not isinstance(piece, str):
                ready, held = _scan(held, final=True)[0], ""
                if ready:
                    yield ready
                yield piece
                continue
            ready, held = _scan(held + piece, final=False)
            if ready:
                yield ready
        ready, _ = _scan(held, final=True)
        if ready:
            yield ready
    finally:
        close_iterator(iterator)


_SURROGATE = regex.compile("[\ud800-\udfff]")


def scrub_surrogates(pieces: Iterable[str | T]) -> Iterator[str | T]:
    """Replace lone UTF-16 surrogates (which UTF-8 cannot encode) with U+FFFD; other items pass as they are.

    A source that echoes a request's `"\\ud800"` would otherwise break the response while it is encoded.

    >>> list(scrub_surrogates(["ok", "a\\ud800b"]))
    ['ok', 'a\ufffdb']
    """
    for piece in pieces:
        yield _SURROGATE.sub("\ufffd", piece) if isinstance(piece, str) else piece


def neutralize_text(text: str) -> str:
    """The whole-text form, for replies that are not streamed.

    >>> neutralize_text("[a](data:text/html,<script>x</script>) ![b](data:image/png;base64,AAAA)")
    '[a](about:blank#blocked:text/html,<script>x</script>) ![b](data:image/png;base64,AAAA)'
    """
    return _scan(text, final=True)[0]
