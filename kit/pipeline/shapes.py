"""The item shapes a source may yield, and where each keeps its text: one table, tried in order.

Shapes are recognised by their structure, not their class, so an SDK's objects and their dict forms (as
`model_dump()` or a JSON stream gives them) read alike and no SDK is imported. A shape's reader returns ""
for items that carry no text by design (a role-only delta, a usage chunk, a `message_start` event, a
tool-call delta); `read_text` returns None for an item no shape recognises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def field(item: Any, name: str) -> Any:
    """`item[name]` for a mapping, `item.name` for an object, None when absent."""
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _content_text(content: Any) -> str:
    """A message's content: a string, or content blocks of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block if isinstance(block, str) else _str(field(block, "text"))
            for block in content
            if isinstance(block, str) or field(block, "type") in ("text", "text_delta", "output_text")
        )
    return ""


def _chat_completion_text(item: Any) -> str:
    choices = field(item, "choices")
    if not choices:  # the usage chunk at the end of a stream has none
        return ""
    choice = choices[0]
    delta = field(choice, "delta")
    return _content_text(field(delta, "content")) if delta is not None else _str(field(choice, "text"))


def _is_chat_completion(item: Any) -> bool:
    return isinstance(field(item, "choices"), list)


def _event_type(item: Any) -> str:
    kind = field(item, "type")
    return kind if isinstance(kind, str) else ""


def _is_responses_event(item: Any) -> bool:
    return _event_type(item).startswith("response.")


def _responses_text(item: Any) -> str:
    return _str(field(item, "delta")) if _event_type(item) == "response.output_text.delta" else ""


_ANTHROPIC_EVENTS = {
    "message_start", "message_delta", "message_stop", "content_block_start", "content_block_delta",
    "content_block_stop", "ping",
}  # fmt: skip


def _is_anthropic_event(item: Any) -> bool:
    return _event_type(item) in _ANTHROPIC_EVENTS or (
        not _event_type(item) and isinstance(field(field(item, "delta"), "text"), str)
    )


def _anthropic_text(item: Any) -> str:
    delta = field(item, "delta")
    if field(delta, "type") not in (None, "text_delta"):  # input_json_delta, thinking_delta: not the answer
        return ""
    return _str(field(delta, "text"))


# What `client.messages.stream()` (Anthropic's MessageStream) adds to the raw events it also yields: each
# text delta comes twice, raw and as a "text" event, so the helper events read as "" (no doubled text).
_ANTHROPIC_HELPER_EVENTS = {"text", "citation", "input_json", "thinking", "signature"}


def _is_anthropic_helper_event(item: Any) -> bool:
    return _event_type(item) in _ANTHROPIC_HELPER_EVENTS and (
        field(item, "snapshot") is not None or field(item, "signature") is not None
    )


# What `client.chat.completions.stream()` (OpenAI's helper) yields: the raw chunk wrapped in a "chunk" event
# and, again, its text in a "content.delta" event; only the latter is read, so the text comes once.
_OPENAI_HELPER_EVENTS = {
    "chunk", "content.delta", "content.done", "refusal.delta", "refusal.done", "logprobs.content.delta",
    "logprobs.content.done", "logprobs.refusal.delta", "logprobs.refusal.done",
    "tool_calls.function.arguments.delta", "tool_calls.function.arguments.done",
}  # fmt: skip


def _is_openai_helper_event(item: Any) -> bool:
    return _event_type(item) in _OPENAI_HELPER_EVENTS


def _openai_helper_text(item: Any) -> str:
    return _str(field(item, "delta")) if _event_type(item) == "content.delta" else ""


def _is_ollama_chat(item: Any) -> bool:
    message = field(item, "message")
    return message is not None and not isinstance(message, str) and field(message, "content") is not None


def _ollama_chat_text(item: Any) -> str:
    return _content_text(field(field(item, "message"), "content"))


def _is_ollama_generate(item: Any) -> bool:
    return isinstance(field(item, "response"), str) and field(item, "done") is not None


def _is_langchain_message(item: Any) -> bool:
    return not isinstance(item, dict) and hasattr(item, "content") and isinstance(getattr(item, "type", None), str)


def _is_generation_chunk(item: Any) -> bool:
    return not isinstance(item, dict) and isinstance(getattr(item, "text", None), str)


_TEXT_KEYS = ("text", "content", "answer", "output")


def _is_text_dict(item: Any) -> bool:
    return isinstance(item, dict) and any(key in item for key in _TEXT_KEYS)


def _text_dict_text(item: Any) -> str:
    return next(_content_text(item[key]) for key in _TEXT_KEYS if key in item)


@dataclass(frozen=True)
class ItemShape:
    """One row of the table: what the item is, how it is recognised, and where its text is."""

    name: str
    recognises: Callable[[Any], bool]
    text: Callable[[Any], str]


SHAPES: tuple[ItemShape, ...] = (
    ItemShape("str (a Hugging Face TextIteratorStreamer, any generator of text)", lambda i: isinstance(i, str), str),
    ItemShape("OpenAI chat-completion chunk, llama-cpp-python chunk", _is_chat_completion, _chat_completion_text),
    ItemShape("OpenAI chat-completion stream helper event", _is_openai_helper_event, _openai_helper_text),
    ItemShape("OpenAI Responses API stream event", _is_responses_event, _responses_text),
    ItemShape("Anthropic stream event (text delta)", _is_anthropic_event, _anthropic_text),
    ItemShape("Anthropic MessageStream helper event", _is_anthropic_helper_event, lambda i: ""),
    ItemShape("LangChain message chunk", _is_langchain_message, lambda i: _content_text(i.content)),
    ItemShape("Ollama chat chunk", _is_ollama_chat, _ollama_chat_text),
    ItemShape("Ollama generate chunk", _is_ollama_generate, lambda i: field(i, "response")),
    ItemShape("LangChain generation chunk, or any object with a str .text", _is_generation_chunk, lambda i: i.text),
    ItemShape("dict with a text, content, answer or output key", _is_text_dict, _text_dict_text),
)

ACCEPTED = "str or bytes pieces, " + "; ".join(shape.name for shape in SHAPES[1:])


def read_text(item: Any) -> str | None:
    """The text an item carries ("" if its shape carries none by design), or None if no shape fits.

    >>> read_text({"message": {"role": "assistant", "content": "Hi"}, "done": False})
    'Hi'
    >>> read_text({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}})
    'Hi'
    >>> read_text({"type": "response.output_text.delta", "delta": "Hi"}), read_text(42)
    ('Hi', None)
    """
    for shape in SHAPES:
        if shape.recognises(item):
            return shape.text(item)
    return None


def describe(item: Any) -> str:
    """An item's type for an error message: the class, and a dict's keys.

    >>> describe({"b": 1, "a": 2})
    "dict with keys ['a', 'b']"
    """
    if isinstance(item, dict):
        return f"dict with keys {sorted(map(str, item))[:8]}"
    return f"{type(item).__module__}.{type(item).__qualname__}".removeprefix("builtins.")
