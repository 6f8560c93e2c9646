"""The item shapes a source may yield, and where each keeps its text and its thinking: one table, tried in order.

Shapes are recognised by their structure, not their class, so an SDK's objects and their dict forms (as
`model_dump()` or a JSON stream gives them) read alike and no SDK is imported. A shape's readers return ""
for items that carry no text (or no thinking) by design (a role-only delta, a usage chunk, a `message_start`
event, a tool-call delta); `read_parts` returns None for an item no shape recognises. Thinking is a reasoning
model's text before its answer (`reasoning_content` deltas, Anthropic thinking blocks, Ollama's `thinking`).
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


def _block_thinking(block: Any) -> str:
    """A reasoning content block's text: LangChain's standard `{"type": "reasoning", "reasoning": ...}`, OpenAI
    Responses' `{"type": "reasoning", "summary": [{"text": ...}]}`, Anthropic's `{"type": "thinking", ...}`."""
    kind = field(block, "type")
    if kind == "thinking":
        return _str(field(block, "thinking"))
    if kind != "reasoning":
        return ""
    summary = field(block, "summary")
    parts = summary if isinstance(summary, list) else []
    return _str(field(block, "reasoning")) + "".join(_str(field(part, "text")) for part in parts)


def _content_thinking(content: Any) -> str:
    return "".join(map(_block_thinking, content)) if isinstance(content, list) else ""


# Where OpenAI-compatible servers put a delta's reasoning: DeepSeek, llama.cpp's server and vLLM before 0.10
# `reasoning_content`; vLLM since, OpenRouter and Ollama's OpenAI API `reasoning`.
_REASONING_KEYS = ("reasoning_content", "reasoning")


def _first_str(item: Any, keys: tuple[str, ...]) -> str:
    return next((value for value in (field(item, key) for key in keys) if isinstance(value, str)), "")


def _chat_delta(item: Any) -> Any:
    choices = field(item, "choices")
    return field(choices[0], "delta") if choices else None  # the usage chunk at the end of a stream has none


def _chat_completion_text(item: Any) -> str:
    choices = field(item, "choices")
    if not choices:
        return ""
    delta = _chat_delta(item)
    return _content_text(field(delta, "content")) if delta is not None else _str(field(choices[0], "text"))


def _chat_completion_thinking(item: Any) -> str:
    return _first_str(_chat_delta(item), _REASONING_KEYS)


def _is_chat_completion(item: Any) -> bool:
    return isinstance(field(item, "choices"), list)


def _event_type(item: Any) -> str:
    kind = field(item, "type")
    return kind if isinstance(kind, str) else ""


def _is_responses_event(item: Any) -> bool:
    return _event_type(item).startswith("response.")


def _responses_text(item: Any) -> str:
    return _str(field(item, "delta")) if _event_type(item) == "response.output_text.delta" else ""


# A reasoning model's summary of its thinking (OpenAI's o-series, gpt-5), or its raw thinking (gpt-oss on vLLM).
_RESPONSES_THINKING = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")


def _responses_thinking(item: Any) -> str:
    return _str(field(item, "delta")) if _event_type(item) in _RESPONSES_THINKING else ""


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


def _anthropic_thinking(item: Any) -> str:
    delta = field(item, "delta")
    return _str(field(delta, "thinking")) if field(delta, "type") == "thinking_delta" else ""


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


def _openai_helper_thinking(item: Any) -> str:
    # The helper has no reasoning event of its own: the raw chunk it wraps carries the delta's reasoning.
    return _chat_completion_thinking(field(item, "chunk")) if _event_type(item) == "chunk" else ""


def _is_ollama_chat(item: Any) -> bool:
    message = field(item, "message")
    return message is not None and not isinstance(message, str) and field(message, "content") is not None


def _ollama_chat_text(item: Any) -> str:
    return _content_text(field(field(item, "message"), "content"))


def _ollama_chat_thinking(item: Any) -> str:
    return _str(field(field(item, "message"), "thinking"))


def _is_ollama_generate(item: Any) -> bool:
    return isinstance(field(item, "response"), str) and field(item, "done") is not None


def _is_langchain_message(item: Any) -> bool:
    return not isinstance(item, dict) and hasattr(item, "content") and isinstance(getattr(item, "type", None), str)


def _langchain_thinking(item: Any) -> str:
    """`additional_kwargs["reasoning_content"]` (ChatDeepSeek, ChatOllama with reasoning, ChatGroq, ChatXAI), then
    reasoning content blocks (ChatOpenAI on the Responses API, ChatAnthropic, LangChain's standard blocks)."""
    extra = getattr(item, "additional_kwargs", None)
    return (_first_str(extra, ("reasoning_content",)) if isinstance(extra, dict) else "") + _content_thinking(
        item.content
    )


def _is_generation_chunk(item: Any) -> bool:
    return not isinstance(item, dict) and isinstance(getattr(item, "text", None), str)


_TEXT_KEYS = ("text", "content", "answer", "output")
_THINKING_KEYS = ("thinking", "reasoning_content", "reasoning")


def _is_text_dict(item: Any) -> bool:
    return isinstance(item, dict) and (
        any(key in item for key in _TEXT_KEYS) or any(isinstance(item.get(key), str) for key in _THINKING_KEYS)
    )


def _text_dict_text(item: Any) -> str:
    return next((_content_text(item[key]) for key in _TEXT_KEYS if key in item), "")


def _none(item: Any) -> str:
    return ""


@dataclass(frozen=True)
class ItemShape:
    """One row of the table: what the item is, how it is recognised, where its text and its thinking are."""

    name: str
    recognises: Callable[[Any], bool]
    text: Callable[[Any], str]
    thinking: Callable[[Any], str] = _none


SHAPES: tuple[ItemShape, ...] = (
    ItemShape("str (a Hugging Face TextIteratorStreamer, any generator of text)", lambda i: isinstance(i, str), str),
    ItemShape(
        "OpenAI chat-completion chunk, llama-cpp-python chunk (reasoning_content / reasoning deltas: thinking)",
        _is_chat_completion, _chat_completion_text, _chat_completion_thinking,
    ),
    ItemShape(
        "OpenAI chat-completion stream helper event", _is_openai_helper_event, _openai_helper_text,
        _openai_helper_thinking,
    ),
    ItemShape(
        "OpenAI Responses API stream event (reasoning summary and reasoning text deltas: thinking)",
        _is_responses_event, _responses_text, _responses_thinking,
    ),
    ItemShape(
        "Anthropic stream event (text delta; thinking_delta: thinking)",
        _is_anthropic_event, _anthropic_text, _anthropic_thinking,
    ),
    ItemShape("Anthropic MessageStream helper event", _is_anthropic_helper_event, _none),
    ItemShape(
        "LangChain message chunk (reasoning_content of additional_kwargs, reasoning/thinking blocks: thinking)",
        _is_langchain_message, lambda i: _content_text(i.content), _langchain_thinking,
    ),
    ItemShape(
        "Ollama chat chunk (message.thinking: thinking)", _is_ollama_chat, _ollama_chat_text, _ollama_chat_thinking,
    ),
    ItemShape(
        "Ollama generate chunk (thinking: thinking)", _is_ollama_generate, lambda i: field(i, "response"),
        lambda i: _str(field(i, "thinking")),
    ),
    ItemShape("LangChain generation chunk, or any object with a str .text", _is_generation_chunk, lambda i: i.text),
    ItemShape(
        "dict with a text, content, answer or output key (thinking, reasoning_content or reasoning: thinking)",
        _is_text_dict, _text_dict_text, lambda i: _first_str(i, _THINKING_KEYS),
    ),
)  # fmt: skip

ACCEPTED = "str or bytes pieces, " + "; ".join(shape.name for shape in SHAPES[1:])


def read_parts(item: Any) -> tuple[str, str] | None:
    """(thinking, text) of an item ("" where its shape carries none by design), or None if no shape fits.

    >>> read_parts({"choices": [{"delta": {"reasoning_content": "Hmm."}}]})
    ('Hmm.', '')
    >>> read_parts({"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "So"}})
    ('So', '')
    >>> read_parts({"message": {"role": "assistant", "content": "Hi", "thinking": ""}, "done": False})
    ('', 'Hi')
    """
    for shape in SHAPES:
        if shape.recognises(item):
            return shape.thinking(item), shape.text(item)
    return None


def read_text(item: Any) -> str | None:
    """The text an item carries ("" if its shape carries none by design), or None if no shape fits.

    >>> read_text({"message": {"role": "assistant", "content": "Hi"}, "done": False})
    'Hi'
    >>> read_text({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}})
    'Hi'
    >>> read_text({"type": "response.output_text.delta", "delta": "Hi"}), read_text(42)
    ('Hi', None)
    """
    parts = read_parts(item)
    return None if parts is None else parts[1]


def read_thinking(item: Any) -> str:
    """The thinking an item carries ("" for none, or for an item no shape fits).

    >>> read_thinking({"type": "response.reasoning_summary_text.delta", "delta": "Plan"})
    'Plan'
    """
    parts = read_parts(item)
    return "" if parts is None else parts[0]


def describe(item: Any) -> str:
    """An item's type for an error message: the class, and a dict's keys.

    >>> describe({"b": 1, "a": 2})
    "dict with keys ['a', 'b']"
    """
    if isinstance(item, dict):
        return f"dict with keys {sorted(map(str, item))[:8]}"
    return f"{type(item).__module__}.{type(item).__qualname__}".removeprefix("builtins.")
