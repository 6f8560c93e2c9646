"""What the in-process engine and a remote one share: a reply's text from its chat-completion chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kit.pipeline.cancel import CancelToken


class ChatText:
    """`chat()`, the text of `stream()`'s chunks, for an engine that has `stream()`."""

    stream: Callable[..., Iterator[dict[str, Any]]]  # the engine's own: chat-completion chunks

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        cancel: CancelToken | None = None,
        reuse: bool = True,
        usage: dict[str, int] | None = None,
        **options: Any,
    ) -> Iterator[str]:
        """Like `stream`, but yields only the non-empty text of each chunk; the last chunk's token counts
        (`prompt_tokens`, `completion_tokens`) go into `usage` when it is given."""
        for chunk in self.stream(messages, cancel=cancel, reuse=reuse, **options):
            if usage is not None and chunk.get("usage"):
                usage.update(chunk["usage"])
            choices = chunk.get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
            if text:
                yield text


def merge_texts(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks with each run of text-only deltas in a row joined into its first chunk (the others as they are).

    >>> text = lambda t: {"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
    >>> end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {}}
    >>> [c["choices"][0]["delta"] for c in merge_texts([text("Hel"), text("lo"), end, text("!")])]
    [{'content': 'Hello'}, {}, {'content': '!'}]
    """
    merged: list[dict[str, Any]] = []
    for chunk in chunks:
        if merged and text_only(chunk) and text_only(merged[-1]):
            merged[-1]["choices"][0]["delta"]["content"] += chunk["choices"][0]["delta"]["content"]
        else:
            merged.append(chunk)
    return merged


def text_only(chunk: Any) -> bool:
    """A chunk of reply text and nothing else (no role, no end, no tool call): one that can wait to be joined."""
    if not isinstance(chunk, dict):
        return False
    choices = chunk.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return len(choices) == 1 and set(delta) == {"content"} and choices[0].get("finish_reason") is None
