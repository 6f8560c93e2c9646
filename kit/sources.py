"""Turn whatever the user hands to `create_app` into a stream of non-empty text pieces."""

from __future__ import annotations

import codecs
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kit.pump import CancelToken, close_iterator

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


def answer_text(pieces: Iterable[str | Role]) -> str:
    """The text of a reply that is not streamed: the answer's, without other roles' bubbles (steps).

    >>> answer_text(["Hi", Role("steps"), "thinking...", Role("ai"), " there"])
    'Hi there'
    """
    parts: list[str] = []
    in_answer = True
    for piece in pieces:
        if isinstance(piece, Role):
            in_answer = piece.name == ANSWER_ROLE
        elif in_answer:
            parts.append(piece)
    return "".join(parts)


Source = Callable[..., Iterable[Any]] | Streamable | str
"""A callable `(messages) -> iterable`, optionally taking `cancel=`; a Runnable; or a fixed reply."""

SourceFn = Callable[[list[Message], CancelToken], Iterable[Any]]
"""What every source becomes: called with the conversation and the cancel token, it returns the stream.
Errors raised by the call itself (before the first item) can still become an HTTP status."""


@dataclass(frozen=True)
class SourceAdapter:
    """One kind of object `create_app` accepts beyond plain callables and strings, and how it becomes a
    SourceFn. `adapt` runs when the app is created, so it may raise TypeError with advice then."""

    name: str
    recognises: Callable[[object], bool]
    adapt: Callable[[Any], SourceFn]


_adapters: list[SourceAdapter] = []


def register_source_adapter(adapter: SourceAdapter) -> None:
    """Teach `adapt_source` a new kind of source (an adapter module calls this when it is imported).

    Later registrations are tried first, so a specific kind (say, a LangGraph graph) wins over a general one
    (any LangChain Runnable); registering a name again replaces the earlier adapter of that name.
    """
    _adapters[:] = [adapter, *(known for known in _adapters if known.name != adapter.name)]


def adapt_source(source: object) -> SourceFn:
    """Turn what the user passed to `create_app` into a SourceFn, or raise TypeError saying what to pass.

    >>> list(adapt_source("Hi")([{"role": "user", "text": "Hello"}], CancelToken()))
    ['Hi']
    """
    for adapter in _adapters:
        if adapter.recognises(source):
            return adapter.adapt(source)
    if isinstance(source, str):
        return lambda messages, cancel: [source]
    if callable(source):
        return _plain_callable(source)
    raise TypeError(
        "source must be a callable taking the message list, an object with .stream() "
        f"(a LangChain Runnable), or a str; got {type(source).__name__}"
    )


def _plain_callable(function: Callable[..., Iterable[Any]]) -> SourceFn:
    if _accepts_cancel(function):
        return lambda messages, cancel: function(messages, cancel=cancel)
    return lambda messages, cancel: function(messages)


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
    """The text carried by one streamed item: str, message chunk, llama.cpp delta, or dict.

    >>> to_text({"choices": [{"delta": {"content": "Hi"}}]})
    'Hi'
    """
    if item is None:
        return ""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return _dict_text(item)
    content = getattr(item, "content", None)  # LangChain message chunks
    if content is not None:
        return _content_text(content)
    text = getattr(item, "text", None)  # LangChain generation chunks, Deep Chat-like objects
    if isinstance(text, str):
        return text
    raise TypeError(f"cannot get text out of a streamed {type(item).__name__}; yield str pieces instead")


def _dict_text(item: dict[str, Any]) -> str:
    choices = item.get("choices")
    if isinstance(choices, list):  # llama-cpp-python / OpenAI chunks
        choice = choices[0] if choices else {}
        delta = choice.get("delta")
        if isinstance(delta, dict):
            return delta.get("content") or ""
        return choice.get("text") or ""
    for key in ("text", "content", "answer", "output"):
        if key in item:
            return to_text(item[key])
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text ones
        return "".join(
            block if isinstance(block, str) else block.get("text", "")
            for block in content
            if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
        )
    return ""


def texts(items: Iterable[Any]) -> Iterator[str | Role]:
    """Normalise items to non-empty text (Role markers pass as they are); bytes are decoded incrementally,
    so a token that ends inside a UTF-8 sequence is joined with the next one instead of becoming U+FFFD.

    >>> list(texts([b"caf\\xc3", b"\\xa9", "", " ok"]))
    ['caf', 'é', ' ok']
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    iterator = iter(items)
    try:
        for item in iterator:
            if isinstance(item, Role):
                yield item
                continue
            text = decoder.decode(item) if isinstance(item, bytes | bytearray) else to_text(item)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
    finally:
        close_iterator(iterator)
