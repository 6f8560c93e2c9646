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
