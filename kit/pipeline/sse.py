"""Server-Sent Events framing for Deep Chat: one JSON object per `data:` line."""

from __future__ import annotations

import json
from typing import Any

# A lone comment line with a single newline: it keeps TCP and proxies alive, and because no blank line
# follows it, the browser's SSE parser dispatches nothing (Deep Chat treats any dispatched message after
# an error as "clear the error bubble").
HEARTBEAT = ": ping\n"

# Deep Chat ignores `event:` and `id:` fields, so headers and `data:` lines are all that matter.
STREAM_HEADERS: dict[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    # nginx reads this and stops buffering the response, whatever proxy_buffering says.
    "X-Accel-Buffering": "no",
    # Compression makes proxies and browsers wait for a full block before passing bytes on.
    "Content-Encoding": "identity",
}


def encode_event(payload: dict[str, Any]) -> str:
    """Frame one Deep Chat event as an SSE message.

    >>> encode_event({"text": "héllo\\n"})
    'data: {"text": "héllo\\\\n"}\\n\\n'
    """
    # json.dumps escapes newlines inside strings, so the payload always fits on one `data:` line.
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def text_event(text: str, role: str | None = None) -> str:
    """Frame a piece of reply text, appended by Deep Chat to the current bubble; with a `role` other than
    the current bubble's, Deep Chat starts a new bubble for that role (an event with a role but no text is
    ignored, so the role always rides on text).

    >>> text_event("Thinking", role="steps")
    'data: {"role": "steps", "text": "Thinking"}\\n\\n'
    """
    return encode_event({"text": text} if role is None else {"role": role, "text": text})


def error_event(message: str) -> str:
    """Frame an error; Deep Chat shows it as an error bubble and keeps the partial text."""
    return encode_event({"error": message})


def usage_event(usage: dict[str, Any]) -> str:
    """Frame a reply's token usage, its last event: Deep Chat shows nothing for an event without text, and
    a page's `responseInterceptor` can read it.

    >>> usage_event({"input_tokens": 3, "output_tokens": 5})
    'data: {"usage": {"input_tokens": 3, "output_tokens": 5}}\\n\\n'
    """
    return encode_event({"usage": usage})
