"""Server-Sent Events for Deep Chat: framing typed events (one JSON object per `data:` line, written once, at
the web edge) and the one decoder the kit's clients read SSE with."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from kit.pipeline.events import ErrorEvent, Event, HeartbeatEvent, TextEvent, UsageEvent

# A lone comment line with a single newline: it keeps TCP and proxies alive, and because no blank line
# follows it, the browser's SSE parser dispatches nothing (Deep Chat treats any dispatched message after
# an error as "clear the error bubble").
HEARTBEAT = ": ping\n"
# The end of a run, as a lone comment too (nothing dispatched): the kit's page tells a reply that ended from a
# connection that closed mid-reply (a proxy restarting), which it rejoins.
END = ": end\n"

# Deep Chat ignores `event:` and `id:` fields, so headers and `data:` lines are all that matter to it; the
# `id:` line is for the kit's page, which rejoins a run from the last id it has.
STREAM_HEADERS: dict[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    # nginx reads this and stops buffering the response, whatever proxy_buffering says.
    "X-Accel-Buffering": "no",
    # Compression makes proxies and browsers wait for a full block before passing bytes on.
    "Content-Encoding": "identity",
}


def encode_event(payload: dict[str, Any], event_id: int | None = None) -> str:
    """Frame one Deep Chat event as an SSE message.

    >>> encode_event({"text": "héllo\\n"})
    'data: {"text": "héllo\\\\n"}\\n\\n'
    >>> encode_event({"text": "a"}, 7)
    'id: 7\\ndata: {"text": "a"}\\n\\n'
    """
    # json.dumps escapes CR and LF inside strings, so the payload always fits on one `data:` line (U+2028,
    # U+2029 and U+0085 stay raw: they end no SSE line).
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def frame(event: Event) -> str:
    """The SSE text of a typed event: a text or an error event, a heartbeat comment, an end comment (for Deep
    Chat the connection closing is the end).

    >>> frame(TextEvent(1, "Thinking", role="steps"))
    'id: 1\\ndata: {"text": "Thinking", "role": "steps"}\\n\\n'
    >>> from kit.pipeline.events import EndEvent
    >>> frame(HeartbeatEvent(1)), frame(EndEvent(2, "finished"))
    (': ping\\n', ': end\\n')
    """
    if isinstance(event, TextEvent):
        # An event with a role but no text is ignored by Deep Chat, so the role always rides on text.
        payload = {"text": event.text} if event.role is None else {"text": event.text, "role": event.role}
        return encode_event(payload, event.id)
    if isinstance(event, ErrorEvent):
        return encode_event({"error": event.message}, event.id)
    if isinstance(event, UsageEvent):
        # No text: Deep Chat shows nothing for it, and a page's `responseInterceptor` can read it.
        return encode_event({"usage": event.usage}, event.id)
    if isinstance(event, HeartbeatEvent):
        return HEARTBEAT
    return END


# -- reading SSE (the kit's client, the doctor, tests) --------------------------------------------------------

# The spec's end of line: CRLF, a lone LF or a lone CR, and nothing else. str.splitlines() and httpx's
# iter_lines also split at U+2028, U+2029, U+0085, VT, FF and U+001C-U+001E, which JSON leaves raw in a string.
_END_OF_LINE = re.compile(r"\r\n|\r|\n")


class LineDecoder:
    """Cuts a stream of text chunks into SSE lines, at CR, LF or CRLF only, whatever the chunk boundaries.

    >>> decoder = LineDecoder()
    >>> decoder.feed("data: a\\u2028b\\r"), decoder.feed("\\ndata: c\\rdata"), decoder.feed(": d\\n")
    (['data: a\\u2028b'], ['data: c'], ['data: d'])
    """

    def __init__(self) -> None:
        self._tail = ""
        self._after_cr = False  # the last chunk ended in CR: an LF starting the next one belongs to it

    def feed(self, chunk: str) -> list[str]:
        """The lines this chunk completes."""
        if self._after_cr and chunk.startswith("\n"):
            chunk = chunk[1:]
        if not chunk:
            return []
        self._after_cr = chunk.endswith("\r")
        parts = _END_OF_LINE.split(self._tail + chunk)
        self._tail = parts.pop()
        return parts

    def close(self) -> list[str]:
        """A last line the stream did not end (the spec drops it; returned for callers that report it)."""
        tail, self._tail = self._tail, ""
        return [tail] if tail else []


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The SSE lines of a stream of decoded text chunks (`httpx.Response.iter_text()`), in order.

    >>> list(sse_lines(["id: 1\\r\\nda", "ta: x\\u0085y\\n\\n"]))
    ['id: 1', 'data: x\\x85y', '']
    """
    decoder = LineDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)


def parse_line(line: str) -> tuple[str, str]:
    """A line's field and value, as the spec reads them: `("", comment)` for a comment, one leading space of
    the value dropped.

    >>> parse_line("data: {}"), parse_line(": ping"), parse_line("id:7")
    (('data', '{}'), ('', 'ping'), ('id', '7'))
    """
    name, colon, value = line.partition(":")
    return name, value.removeprefix(" ") if colon else ""
