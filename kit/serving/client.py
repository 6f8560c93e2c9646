"""A small SSE client for the kit's stream route: for notebooks, benchmarks, `doctor` and tests.

It reads raw lines rather than only dispatched events, because heartbeats are comment lines that a
browser's parser (rightly) never surfaces, and proving they pass is part of the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from kit.pipeline.sse import END, parse_line, sse_lines


@dataclass(frozen=True)
class Received:
    """One thing read off the stream: an event's JSON payload, or a heartbeat comment."""

    at: float  # time.perf_counter() when its line arrived
    payload: dict[str, Any] | None = None  # None for a heartbeat
    raw: str = ""
    id: str | None = None  # the `id:` field of the event (the kit numbers a reply's events from 1)

    @property
    def is_heartbeat(self) -> bool:
        return self.payload is None


@dataclass
class Reply:
    """Everything a stream delivered, with timings."""

    status: int
    headers: dict[str, str]
    started: float
    items: list[Received] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [item.payload for item in self.items if item.payload is not None]

    @property
    def text(self) -> str:
        return "".join(event.get("text", "") for event in self.events)

    def text_of(self, role: str = "ai") -> str:
        """The text of one role's bubbles (an event without a role continues the previous one's)."""
        pieces, current = [], "ai"
        for event in self.events:
            current = event.get("role", current)
            if current == role:
                pieces.append(event.get("text", ""))
        return "".join(pieces)

    @property
    def errors(self) -> list[str]:
        return [event["error"] for event in self.events if "error" in event]

    @property
    def heartbeats(self) -> int:
        return sum(item.is_heartbeat for item in self.items)


# Always sent, as Deep Chat does: jupyter-server-proxy (JupyterHub, remote Jupyter servers) streams a response
# only when the request's Accept header is exactly this, and buffers the whole reply of any other request.
ACCEPT_HEADERS = {"Accept": "text/event-stream"}


def chat_body(text: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The JSON body Deep Chat sends: the whole visible history plus the new user message."""
    return {"messages": [*(history or []), {"role": "user", "text": text}]}


Upload = tuple[str, bytes, str]
"""An attached file: (name, bytes, media type)."""


def multipart_body(messages: list[dict[str, Any]], files: Sequence[Upload]) -> dict[str, Any]:
    """httpx's `data=` and `files=` for a message with attachments, the way Deep Chat 2.4 sends them (seen in
    chromium): each file a `files` part, each message JSON in `message1`, `message2`, ..., the newest last
    without its files, and left out when it has no text.

    >>> multipart_body([{"role": "user", "text": "Hi"}], [("a.txt", b"x", "text/plain")])["data"]
    {'message1': '{"role": "user", "text": "Hi"}'}
    """
    sent = [*messages[:-1], *([messages[-1]] if messages and messages[-1].get("text") else [])]
    data = {f"message{number}": json.dumps(message, ensure_ascii=False) for number, message in enumerate(sent, 1)}
    return {"data": data, "files": [("files", upload) for upload in files]}


def iter_stream(
    url: str,
    body: dict[str, Any],
    *,
    client: httpx.Client | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
    files: Sequence[Upload] = (),
) -> Iterator[Received | Reply]:
    """Yield the Reply header first, then each Received item as its line arrives (`headers` are sent along
    with the Accept header, e.g. a stream id for `POST /chat-stream/stop`; `files` attached to the last message,
    as Deep Chat's attachment button sends them)."""
    own_client = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        started = time.perf_counter()
        sent = multipart_body(body["messages"], files) if files else {"json": body}  # files: as Deep Chat sends them
        with http.stream("POST", url, **sent, headers={**ACCEPT_HEADERS, **(headers or {})}) as response:
            yield Reply(response.status_code, dict(response.headers), started)
            if response.status_code != 200:
                response.read()
                is_json = response.headers.get("content-type", "").startswith("application/json")
                payload = response.json() if is_json else {}
                yield Received(time.perf_counter(), payload, response.text)
                return
            yield from _received(response.iter_text())
    finally:
        if own_client:
            http.close()


def _received(chunks: Iterator[str]) -> Iterator[Received]:
    """The heartbeats and events of an SSE body, each as its line arrives (lines end at CR, LF or CRLF only)."""
    event_id: str | None = None
    for line in sse_lines(chunks):
        name, value = parse_line(line)
        if not name and line and line != END.rstrip("\n"):  # a heartbeat (the end's comment is none)
            yield Received(time.perf_counter(), None, line)
        elif name == "id":
            event_id = value
        elif name == "data":
            yield Received(time.perf_counter(), json.loads(value), line, event_id)


def stream_chat(
    url: str,
    text: str,
    *,
    history: list[dict[str, str]] | None = None,
    timeout: float = 60.0,
    client: httpx.Client | None = None,
    files: Sequence[Upload] = (),
) -> Reply:
    """Send one chat message (after the earlier turns in `history`, with `files` attached: (name, bytes, media
    type) each) to a stream route and read the whole reply.

    >>> from kit import create_app
    >>> from kit.serving.server import BackgroundServer
    >>> with BackgroundServer(create_app(lambda m: ["Hi ", "there"])) as server:
    ...     stream_chat(server.url + "chat-stream", "hello").text
    'Hi there'
    """
    items = iter_stream(url, chat_body(text, history), timeout=timeout, client=client, files=files)
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    return reply
