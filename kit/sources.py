"""Turn whatever the user hands to `create_app` into a stream of non-empty text pieces."""

from __future__ import annotations

import codecs
import inspect
import sys
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


def check_source(source: object) -> None:
    """Raise TypeError now, at app creation, rather than on the first chat."""
    if not (isinstance(source, (str, Streamable)) or callable(source)):
        raise TypeError(
            "source must be a callable taking the message list, an object with .stream() "
            f"(a LangChain Runnable), or a str; got {type(source).__name__}"
        )
    if isinstance(source, Streamable) and "langchain_core" in sys.modules:  # a Runnable: LangChain is loaded
        from kit.chains import prepare_runnable

        prepare_runnable(source)  # a chain whose input cannot be built from the history fails now


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


def call_source(source: Source, messages: list[Message], cancel: CancelToken) -> Iterable[Any]:
    """Start the source on a conversation; errors raised here can still become an HTTP status."""
    if isinstance(source, str):
        return [source]
    if isinstance(source, Streamable):
        from kit.chains import stream_runnable  # LangChain is imported only when a Runnable is used

        return stream_runnable(source, messages, cancel)
    if _accepts_cancel(source):
        return source(messages, cancel=cancel)
    return source(messages)


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
