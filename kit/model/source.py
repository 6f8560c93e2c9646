"""LlamaSource: the embedded model as a kit source without LangChain."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from kit.model.engine import Engine, engine_for
from kit.model.remote import RemoteEngine
from kit.model.settings import LlamaSettings
from kit.pipeline.cancel import CancelToken
from kit.pipeline.coalesce import current_window_s
from kit.pipeline.files import with_files_text
from kit.pipeline.sources import Message

# Deep Chat roles to chat-template roles; other roles (say, a "steps" bubble the kit streamed) are not
# part of the conversation the model should see.
_ROLES = {"user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}


def to_llama_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Deep Chat messages as chat-template messages; roles the model should not see are dropped, attached files
    are named sections of their message (an image or a recording a sentence saying the model does not get it).

    >>> to_llama_messages([{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"}, {"role": "x", "text": ""}])
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    """
    return [
        {"role": _ROLES[m["role"]], "content": with_files_text(str(m.get("text", "")), m.get("files") or [])}
        for m in messages
        if m.get("role") in _ROLES
    ]


class LlamaSource:
    """A kit source streaming llama-cpp-python's own `create_chat_completion(stream=True)` chunks.

    `create_app(LlamaSource())` serves the embedded model without LangChain; the kit reads each
    chunk's `choices[0].delta.content`. A full queue is refused with ServiceBusy when the source is called.
    """

    def __init__(self, settings: LlamaSettings | None = None, **overrides: Any) -> None:
        self.settings = replace(settings or LlamaSettings(), **overrides)
        self.settings.check()  # a missing model or llama-cpp-python is reported when the source is built

    @property
    def engine(self) -> Engine | RemoteEngine:
        """The shared engine for these settings (a new one after `close_engines()`), or the client of the
        server at `engine_url` (kit.model.remote)."""
        return engine_for(self.settings)

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[dict[str, Any]]:
        settings = self.settings
        return self.engine.open(
            to_llama_messages(messages),
            cancel,
            reuse=settings.prefix_reuse,
            max_queue=settings.max_queue,
            window_s=current_window_s(),  # an engine process joins the text as the stream would coalesce it
            **settings.options(),
        )
