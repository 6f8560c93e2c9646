"""The web edge every streamed route shares (the chat, the approvals' resume, a rejoin): a running pump becomes
the request's typed events, and those become SSE text here, as the very last step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from flask import Response, current_app, request, stream_with_context

from kit.pipeline.cancel import client_gone_probe
from kit.pipeline.events import EndEvent, ErrorEvent, Event, HeartbeatEvent, UsageEvent
from kit.pipeline.observe import StreamObserver, WriteKind
from kit.pipeline.pump import Pump, close_iterator
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Message
from kit.pipeline.sse import STREAM_HEADERS, frame
from kit.pipeline.streaming import reply_events
from kit.web.observers import observers_for

STREAM_ID_HEADER = "X-Kit-Stream-Id"
"""The page names each stream with 128 random bits, so that its Stop can reach it by `POST chat-stream/stop`."""

EventsWrap = Callable[[Iterator[Event]], Iterator[Event]]


def stream_reply(
    pump: Pump,
    settings: StreamSettings,
    messages: list[Message],
    wrap: EventsWrap = lambda events: events,
    *,
    client_gone: Callable[[], bool] | None = None,
    on_drop: Callable[[Iterator[Event]], None] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The SSE response of a running pump for this request: its stream id, its client, the app's observers;
    `wrap` sees the typed events on the way (the transcript, an interrupt's claim, a run's log). By default a
    client that leaves cancels the reply; `client_gone` and `on_drop` replace that (a run that goes on)."""
    observers = observers_for(current_app, messages)
    events = reply_events(
        pump,
        settings,
        stream_id=request.headers.get(STREAM_ID_HEADER),
        client_gone=client_gone or client_gone_probe(request.environ),
        observers=observers,
    )
    return sse_response(wrap(events), observers, on_drop=on_drop, headers=headers)


def sse_response(
    events: Iterator[Event],
    observers: list[StreamObserver] | None = None,
    *,
    on_drop: Callable[[Iterator[Event]], None] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A streamed response of typed events, framed as SSE as they go out. When the client leaves before the
    end, `on_drop` gets the rest of the events (default: they are closed, which cancels the source)."""
    body = stream_with_context(sse_text(events, observers or [], on_drop))
    return Response(body, headers={**STREAM_HEADERS, **(headers or {})})


def sse_text(
    events: Iterator[Event], observers: list[StreamObserver], on_drop: Callable[[Iterator[Event]], None] | None = None
) -> Iterator[str]:
    """Each event's SSE text; observers learn how many bytes went out (the end's comment is not counted)."""
    ended = False
    try:
        for event in events:
            data = frame(event)
            if observers and not isinstance(event, EndEvent):
                _wrote(observers, _kind(event), len(data.encode()))
            yield data
        ended = True
    finally:
        # At once, in this thread: the source is cancelled (or the run goes on) and the transcript written now.
        (on_drop if on_drop is not None and not ended else close_iterator)(events)


def _kind(event: Event) -> WriteKind:
    if isinstance(event, HeartbeatEvent):
        return "heartbeat"
    if isinstance(event, UsageEvent):
        return "usage"
    return "error" if isinstance(event, ErrorEvent) else "text"


def _wrote(observers: list[StreamObserver], kind: WriteKind, nbytes: int) -> None:
    at = time.perf_counter()
    for observer in observers:
        observer.write(kind, nbytes, at)
