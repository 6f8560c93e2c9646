"""Turn whatever the user hands to `create_app` into a stream of non-empty text pieces."""

from __future__ import annotations

import codecs
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kit.errors import ChatError
from kit.pipeline.async_sources import is_async_iterable, with_async
from kit.pipeline.cancel import CancelToken
from kit.pipeline.pump import close_iterator
from kit.pipeline.shapes import ACCEPTED, describe, read_parts, read_text
from kit.pipeline.usage import Usage

Message = dict[str, Any]
"""One Deep Chat message: {"role": "user" | "ai" | "system", "text": str, "files"?: [...]}."""


@runtime_checkable
class Streamable(Protocol):
    """Anything with LangChain's `.stream(input)`: a Runnable, a chain, a chat model."""

    def stream(self, input: Any, *args: Any, **kwargs: Any) -> Iterator[Any]: ...


@dataclass(frozen=True)
class Role:
    """A marker a source may yield between text pieces: the text after it goes into a new Deep Chat
    bubble of this role (Deep Chat starts a new bubble when an event names another role), e.g. "steps"
    for a chain's intermediate steps, then "ai" for its answer.
    """

    name: str


ANSWER_ROLE = "ai"
"""Deep Chat's role for the assistant's bubble."""

THINKING_ROLE = "thinking"
"""The role of a reasoning model's thinking: a bubble of its own (see kit.pipeline.thinking)."""

CONVERSATION_ROLES = frozenset({"user", "ai", "assistant", "system"})
"""The roles of a conversation's turns; other bubbles Deep Chat sends back (thinking, steps) are not turns."""


def conversation(messages: list[Message]) -> list[Message]:
    """The conversation's turns only: a thinking or steps bubble the kit streamed earlier is not the assistant's words.

    >>> [m["role"] for m in conversation([{"role": "user", "text": "Hi"}, {"role": "thinking", "text": "Hmm"},
    ...                                   {"role": "ai", "text": "Hello"}])]
    ['user', 'ai']
    """
    return [message for message in messages if message.get("role") in CONVERSATION_ROLES]


Source = Callable[..., Iterable[Any]] | Streamable | str
"""A callable `(messages) -> iterable`, optionally taking `cancel=`; a Runnable; or a fixed reply."""

SourceFn = Callable[[list[Message], CancelToken], Iterable[Any]]
"""What every source becomes: called with the conversation and the cancel token, it returns the stream.
Errors raised by the call itself (before the first item) can still become an HTTP status."""


log = logging.getLogger(__name__)


def adapt_plain_source(source: object, also_accepted: Sequence[str] = ()) -> SourceFn:
    """A SourceFn for a plain callable or a fixed reply, or a TypeError saying what to pass (naming the other
    kinds of source `also_accepted`; `kit.adapters.adapt` handles those).

    >>> list(adapt_plain_source("Hi")([{"role": "user", "text": "Hello"}], CancelToken()))
    ['Hi']
    """
    if isinstance(source, str):
        return lambda messages, cancel: [source]
    if callable(source) or is_async_iterable(source):
        return _plain_callable(source)
    known = "".join(f", a {name}" for name in also_accepted)
    raise TypeError(
        f"source must be a callable taking the message list (returning an iterable of {ACCEPTED}; async "
        f"generator and coroutine functions too){known}, an object with __aiter__, or a str; got a {describe(source)}"
    )


def _plain_callable(function: Callable[..., Iterable[Any]]) -> SourceFn:
    # A plain function gets the turns only (adapters build their inputs from the turns themselves).
    if _accepts_cancel(function):
        call: SourceFn = lambda messages, cancel: function(conversation(messages), cancel=cancel)  # noqa: E731
    else:
        call = lambda messages, cancel: function(conversation(messages))  # noqa: E731
    return with_async(function, call)  # async functions run on the kit's event loop (kit.pipeline.async_sources)


def _accepts_cancel(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "cancel" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """Prepend the system prompt, if any, as a `system` message."""
    if not system_prompt:
        return messages
    return [{"role": "system", "text": system_prompt}, *messages]


def to_text(item: Any) -> str:
    """The text carried by one streamed item, of any shape in `kit.pipeline.shapes.SHAPES` ("" for None).

    Raises UnreadableItem naming the item's type when no shape fits.

    >>> to_text({"choices": [{"delta": {"content": "Hi"}}]})
    'Hi'
    """
    if item is None:
        return ""
    text = read_text(item)
    if text is None:
        raise UnreadableItem(f"The kit cannot read text out of a streamed {describe(item)}. {_ADVICE}")
    return text


_ADVICE = f"Yield str pieces, or one of: {ACCEPTED}."


class UnreadableItem(ChatError, TypeError):
    """A source's items carry no text the kit can read; the message names the item type and what to yield."""

    status = 502


def texts(items: Iterable[Any], usage: Usage | None = None, cancel: CancelToken | None = None) -> Iterator[str | Role]:
    """Normalise items to non-empty text (Role markers pass as they are); bytes are decoded incrementally,
    so a token that ends inside a UTF-8 sequence is joined with the next one instead of becoming U+FFFD.
    An item's thinking goes into a `Role(THINKING_ROLE)` bubble, and the text after it back into the bubble
    the source chose last (a Role marker is yielded only where the role changes). Token usage that items
    report goes into `usage` (kit.pipeline.usage). Never silent: items no shape fits are skipped with a
    warning naming their type, and a source that ends without any text raises UnreadableItem saying why, so
    the client gets an error, not an empty bubble (unless `cancel` was set: a Stop is no fault of the source).

    >>> list(texts([b"caf\\xc3", b"\\xa9", "", " ok"]))
    ['caf', 'é', ' ok']
    >>> list(texts([{"thinking": "Hmm."}, {"text": "Hi"}]))
    [Role(name='thinking'), 'Hmm.', Role(name='ai'), 'Hi']
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    iterator = iter(items)
    count, produced, thought, unread = 0, False, False, None
    base = current = ANSWER_ROLE  # the role the source chose last; the role of the bubble being filled
    try:
        for item in iterator:
            if isinstance(item, Role):
                base = item.name
                if base != current:
                    current = base
                    yield item
                continue
            count += 1
            if isinstance(item, str):  # the common case, without a look through the shapes table
                thinking, text = "", item
            elif isinstance(item, bytes | bytearray):
                thinking, text = "", decoder.decode(item)
            else:
                parts = _readable(item, usage)
                if parts is None:
                    if unread is None:
                        unread = describe(item)
                        log.warning("skipping streamed items the kit cannot read: %s. %s", unread, _ADVICE)
                    continue
                thinking, text = parts
            if thinking:  # thinking alone does not make a reply: the source's own text does
                thought = True
                if current != THINKING_ROLE:
                    current = THINKING_ROLE
                    yield Role(THINKING_ROLE)
                yield thinking
            if text:
                produced = True
                if current != base:
                    current = base
                    yield Role(base)
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            produced = True
            yield from ([Role(base)] if current != base else [])
            yield tail
        if not produced and not (cancel is not None and cancel.cancelled):
            raise _no_text(count, unread, thought)
    finally:
        close_iterator(iterator)


def _readable(item: Any, usage: Usage | None) -> tuple[str, str] | None:
    if usage is not None:
        usage.read(item)
    return ("", "") if item is None else read_parts(item)


def _no_text(count: int, unread: str | None, thought: bool = False) -> UnreadableItem:
    if thought:
        message = "The model only thought and wrote no answer (it may have used up its tokens thinking)."
    elif unread is not None:
        message = f"The source yielded {count} item(s) but no text: the kit cannot read a {unread}. {_ADVICE}"
    elif count:
        message = f"The source yielded {count} item(s), none with any text: the reply would be empty."
    else:
        message = "The source ended without yielding anything: the reply would be empty."
    log.warning(message)
    return UnreadableItem(message)
