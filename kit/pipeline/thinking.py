"""A reasoning model's thinking: `<think>` tags in its text, the `thinking` option, and the bubbles it goes to.

Thinking reaches the pipeline two ways. Structured: an SDK item carries it apart from the answer
(`reasoning_content` deltas, Anthropic thinking blocks, ...; `kit.pipeline.shapes` reads them and
`kit.pipeline.sources.texts` puts them after a `Role(THINKING_ROLE)` marker). Or as text: a model served as
plain text writes `<think>...</think>` before its answer, and `split_think_tags` moves that into the thinking
role, whatever the chunks cut (`<th` + `ink>`), in one pass over the text.

The tag rule (docs/reasoning.md): `<think>` opens thinking only at the start of the model's text (after
whitespace) or right after a `</think>`; anywhere else, say in code that mentions it, it is text of the
answer. Thinking ends at the first `</think>`; a reply that ends inside it keeps it as thinking. Whitespace
just inside and just after the tags is dropped. A reply whose template opened the tag in the prompt (so the
model's text starts inside it, with a `</think>` and no `<think>`) says so by starting with the `THINKING`
marker: a normal model's answer is never held back for it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

from kit.pipeline.pump import close_iterator
from kit.pipeline.sources import ANSWER_ROLE, THINKING_ROLE, Role

THINKING_MODES = ("show", "hide", "inline")
"""`show`: a bubble of its own (folded by the page once the answer starts); `hide`: never sent (heartbeats go
on, observers still see it); `inline`: in the answer's bubble, as a quote before the answer."""

THINKING = Role(THINKING_ROLE)
"""Yield it first when the model's text starts inside a `<think>` its template opened: the text up to
`</think>` is then thinking (DeepSeek-R1 and Qwen3 templates served as plain text)."""

OPEN, CLOSE = "<think>", "</think>"
# Whitespace before a possible `<think>` (or before a possible `</think>`) is held, but not without bound.
_MAX_LEAD = 64
_START, _ANSWER, _THINK = "start", "answer", "think"


def check_mode(thinking: str) -> str:
    """The `thinking` option, or ValueError naming the valid ones."""
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {THINKING_MODES}, not {thinking!r}")
    return thinking


def _partial_tail(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag` (0 if none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkTagSplitter:
    """The state of `split_think_tags`: one segment (the text between two Role markers) at a time."""

    def __init__(self) -> None:
        self.emitted = ANSWER_ROLE  # the role downstream last saw
        self._segment(ANSWER_ROLE)

    def _segment(self, role: str) -> None:
        self.role = role  # the source's role for this segment
        self.state = {ANSWER_ROLE: _START, THINKING_ROLE: _THINK}.get(role, _ANSWER)
        self.passing = self.state == _ANSWER and role == self.emitted  # pieces pass as they are, unlooked at
        self.held = ""
        self.after_close = False  # whitespace after `</think>` is dropped
        self.strip = False  # whitespace after `<think>` is dropped

    def _out(self, role: str, text: str) -> Iterator[str | Role]:
        if text:
            if role != self.emitted:
                self.emitted = role
                yield Role(role)
            yield text

    def _answer_role(self) -> str:
        return ANSWER_ROLE if self.role in (ANSWER_ROLE, THINKING_ROLE) else self.role

    def feed(self, piece: str) -> Iterator[str | Role]:
        text, self.held = self.held + piece, ""
        while text:
            if self.state == _ANSWER:
                yield from self._out(self._answer_role(), text)
                self.passing = True  # decided for the rest of the segment, its role announced
                return
            if self.state == _THINK:
                text = yield from self._think(text)
                continue
            lead = text.lstrip()
            if lead.startswith(OPEN):
                text, self.state, self.strip = lead[len(OPEN) :], _THINK, True
            elif (not lead or OPEN.startswith(lead)) and len(text) <= _MAX_LEAD:
                self.held = text  # still undecided: whitespace, or the start of `<think>`
                return
            else:
                self.state = _ANSWER
                text = lead if self.after_close else text

    def _think(self, text: str) -> Generator[str | Role, None, str]:
        """Thinking up to `</think>`; returns the text after it (empty when the tag did not come yet)."""
        if self.strip:
            text = text.lstrip()
            self.strip = not text
        at = text.find(CLOSE)
        if at < 0:
            body = text[: len(text) - _partial_tail(text, CLOSE)]
            trimmed = body.rstrip()  # whitespace that may turn out to be just before `</think>`
            cut = len(trimmed) if len(body) - len(trimmed) <= _MAX_LEAD else len(body)
            yield from self._out(THINKING_ROLE, text[:cut])
            self.held = text[cut:]
            return ""
        yield from self._out(THINKING_ROLE, text[:at].rstrip())
        self.state, self.after_close = _START, True
        return text[at + len(CLOSE) :]

    def end_segment(self, role: str | None) -> Iterator[str | Role]:
        """Release the held text (an unclosed `</thi` stays thinking), then start the next segment."""
        held = self.held.lstrip() if self.after_close and self.state == _START else self.held
        yield from self._out(THINKING_ROLE if self.state == _THINK else self._answer_role(), held)
        if role is not None:
            if role != self.emitted:
                self.emitted = role
                yield Role(role)
            self._segment(role)


def split_think_tags(pieces: Iterable[str | Role]) -> Iterator[str | Role]:
    """Move `<think>...</think>` in the answer's text into the thinking role, the tags cut anywhere.

    >>> list(split_think_tags(["<th", "ink>\\nHmm, 2+2.</th", "ink>\\n\\nIt is 4. <think> is a tag."]))
    [Role(name='thinking'), 'Hmm, 2+2.', Role(name='ai'), 'It is 4. <think> is a tag.']
    >>> list(split_think_tags([THINKING, "The user greets.", "</think>Hello!"]))
    [Role(name='thinking'), 'The user greets.', Role(name='ai'), 'Hello!']
    >>> list(split_think_tags(["<think>cut short"]))
    [Role(name='thinking'), 'cut short']
    """
    splitter = ThinkTagSplitter()
    iterator = iter(pieces)
    try:
        for piece in iterator:
            if isinstance(piece, Role):
                yield from splitter.end_segment(piece.name)
            elif splitter.passing:  # the common case: an answer already told from thinking
                if piece:
                    yield piece
            else:
                yield from splitter.feed(piece)
        yield from splitter.end_segment(None)
    finally:
        close_iterator(iterator)


def inline_thinking(pieces: Iterable[str | Role]) -> Iterator[str | Role]:
    """`thinking="inline"`: the thinking as a Markdown quote, a blank line before what follows (the Role
    markers stay, so observers still tell thinking from answer; `Bubbles` puts both in the answer's bubble).

    >>> list(inline_thinking([THINKING, "Hmm.\\nYes.", Role("ai"), "Hi"]))
    [Role(name='thinking'), '> Hmm.\\n> Yes.', '\\n\\n', Role(name='ai'), 'Hi']
    """
    thinking = started = False
    for piece in pieces:
        if isinstance(piece, Role):
            if thinking and started and piece.name != THINKING_ROLE:
                yield "\n\n"
            thinking = piece.name == THINKING_ROLE
            started = False
            yield piece
        elif thinking:
            yield ("" if started else "> ") + piece.replace("\n", "\n> ")
            started = True
        else:
            yield piece


def thinking_stages(pieces: Iterable[str | Role], thinking: str) -> Iterator[str | Role]:
    """The stages the `thinking` option adds after `texts`: tags split always, the quote for `inline`."""
    split = split_think_tags(pieces)
    return inline_thinking(split) if thinking == "inline" else split


class Bubbles:
    """Which Deep Chat bubble the pieces of each role go to under the `thinking` option, and when an event
    must name a role (once, where the bubble changes: Deep Chat starts a new bubble for another role).

    >>> bubbles = Bubbles("hide")
    >>> bubbles.switch("thinking"); bubbles.bubble is None
    True
    >>> bubbles.switch("ai"); bubbles.announce()  # the answer's bubble is the first one: no role to name
    """

    def __init__(self, thinking: str = "show") -> None:
        self.thinking = check_mode(thinking)
        self.role = ANSWER_ROLE  # whose pieces arrive now
        self._shown = ANSWER_ROLE  # the bubble Deep Chat fills now

    def switch(self, role: str) -> None:
        self.role = role

    @property
    def bubble(self) -> str | None:
        """The bubble the current role's pieces go to; None when they are not sent (hidden thinking)."""
        if self.role != THINKING_ROLE or self.thinking == "show":
            return self.role
        return None if self.thinking == "hide" else ANSWER_ROLE

    def announce(self) -> str | None:
        """The role the next text event must name, or None to go on filling the same bubble."""
        bubble = self.bubble
        if bubble is None or bubble == self._shown:
            return None
        self._shown = bubble
        return bubble
