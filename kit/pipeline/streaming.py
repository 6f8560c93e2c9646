"""The response loop: pump items in, coalesced typed events and heartbeats out, one error at most, then the end."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from kit.errors import ChatError
from kit.pipeline.cancel import OPEN_STREAMS, CancelToken
from kit.pipeline.coalesce import Coalescer
from kit.pipeline.events import EndEvent, EndReason, ErrorEvent, Event, HeartbeatEvent, TextEvent, UsageEvent
from kit.pipeline.granularity import splitter
from kit.pipeline.observe import StreamObserver
from kit.pipeline.pump import TIMEOUT, Failed, Finished, Pump, Timeout
from kit.pipeline.sanitize import neutralize_links, scrub_surrogates
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import ANSWER_ROLE, Role, texts
from kit.pipeline.thinking import Bubbles, thinking_stages
from kit.pipeline.usage import Usage

log = logging.getLogger(__name__)
T = TypeVar("T")

# What the client sees when the source fails after streaming began; the traceback goes to the log.
INTERRUPTED = "The reply was interrupted by a server error. Please try again."
# What the client sees when the server process stops while its reply is streaming.
STOPPING = "The server is restarting and had to end this reply. Please send your message again."


def start_pump(items: Iterable[object], cancel: CancelToken, settings: StreamSettings) -> Pump:
    """Start the producer thread on normalised, sanitised, re-cut text pieces.

    When the source raises, the stages first release the text they hold back (the last word, a
    possible link), so the client gets all the text produced before the error, then the error.
    """
    failure: list[Exception] = []
    usage = Usage()
    text = scrub_surrogates(thinking_stages(_until_failure(texts(items, usage, cancel), failure), settings.thinking))
    if settings.neutralize_links:
        text = neutralize_links(text)
    pieces = _then_raise(splitter(settings.granularity)(text), failure)
    queue_size, stall_timeout_s = settings.queue_size, settings.stall_timeout_s
    return Pump(pieces, cancel, queue_size=queue_size, stall_timeout_s=stall_timeout_s, usage=usage).start()


def _until_failure(items: Iterable[T], failure: list[Exception]) -> Iterator[T]:
    try:
        yield from items
    except Exception as error:
        failure.append(error)  # raised again by _then_raise, once the later stages have flushed


def _then_raise(pieces: Iterable[T], failure: list[Exception]) -> Iterator[T]:
    yield from pieces
    if failure:
        raise failure[0]


def public_message(error: BaseException) -> str:
    """The text a client may see for an error: a ChatError's own message, otherwise a generic one."""
    return error.message if isinstance(error, ChatError) else INTERRUPTED


def collect_answer(pump: Pump) -> str:
    """The whole answer of a running pump, for a reply that is not streamed (`POST /chat`): the same pieces
    a stream sends, without other roles' bubbles (steps). A failure is raised, to become an HTTP error.

    >>> collect_answer(start_pump(["Hi", Role("steps"), "looking...", Role("ai"), " there"], CancelToken(),
    ...                           StreamSettings()))
    'Hi there'
    """
    parts: list[str] = []
    in_answer = True
    try:
        while True:
            item = pump.get(timeout=3600.0)
            if isinstance(item, Role):
                in_answer = item.name == ANSWER_ROLE
            elif isinstance(item, str):
                if in_answer:
                    parts.append(item)
            elif isinstance(item, Failed):
                raise item.error
            elif isinstance(item, Finished):
                return "".join(parts)
    finally:
        pump.close()


class _Watchers:
    """Fans stream notifications out to observers; free when there are none. What was written (bytes) is
    reported by the web edge, which frames the events (kit.web.edge)."""

    def __init__(self, observers: list[StreamObserver]) -> None:
        self.observers = observers

    def piece(self, chars: int) -> None:
        if self.observers:
            at = time.perf_counter()
            for observer in self.observers:
                observer.piece(chars, at)

    def role(self, name: str) -> None:
        at = time.perf_counter()
        for observer in self.observers:
            observer.role(name, at)

    def end(self, reason: EndReason, usage: Usage) -> None:
        at = time.perf_counter()
        for observer in self.observers:
            if usage.reported:
                observer.usage(usage, at)
            observer.end(reason, at)


class _Writer:
    """What one stream has sent and holds back: the coalescer's text, the role of the next bubble, the time of
    the last event (heartbeats are due a while after it), the id of the last event. Every method returns the
    typed events to send."""

    def __init__(self, settings: StreamSettings, watch: _Watchers, now: float) -> None:
        self.coalescer = Coalescer(settings.coalesce_ms / 1000, settings.max_event_chars)
        self.heartbeat_s = settings.heartbeat_s
        self.watch = watch
        self.last_write = now
        self.last_id = 0  # event ids count from 1, so "after 0" is the whole reply
        self.bubbles = Bubbles(settings.thinking)  # a role is sent with the next text event (a new bubble)

    def wake_at(self, now: float, poll_s: float) -> float:
        """When the loop must look again, even without a new piece: a heartbeat, a probe, a flush."""
        wake_at = min(self.last_write + self.heartbeat_s, now + poll_s)
        deadline = self.coalescer.deadline()
        return wake_at if deadline is None else min(wake_at, deadline)

    @property
    def hiding(self) -> bool:
        """The pieces arriving now are not sent (thinking, with thinking="hide")."""
        return self.bubbles.bubble is None

    def piece(self, item: str | Role, now: float) -> Iterator[Event]:
        if isinstance(item, Role):
            yield from self.flush(now)  # text before the marker stays in the bubble it belongs to
            self.bubbles.switch(item.name)
            self.watch.role(item.name)
            return
        self.watch.piece(len(item))
        if self.hiding:
            return
        text = self.coalescer.add(item, now)
        if text is not None:
            yield self._text(text, now)

    def flush(self, now: float, *, due_only: bool = False) -> Iterator[Event]:
        deadline = self.coalescer.deadline()
        if deadline is not None and (not due_only or now >= deadline):
            yield self._text(self.coalescer.flush(now) or "", now)

    def heartbeat(self, now: float) -> Iterator[Event]:
        if now - self.last_write >= self.heartbeat_s:
            self.last_write = now
            yield HeartbeatEvent(self.last_id)

    def usage(self, usage: Usage) -> Iterator[Event]:
        # The reply's last event: Deep Chat ignores an event without text, so the bubble stays as it is.
        if usage.reported:
            self.last_id += 1
            yield UsageEvent(self.last_id, usage.as_dict())

    def error(self, message: str) -> Event:
        # Nothing may follow the error: any later message would make Deep Chat clear its bubble.
        self.last_id += 1
        return ErrorEvent(self.last_id, message)

    def end(self, reason: EndReason) -> Event:
        self.last_id += 1
        return EndEvent(self.last_id, reason)

    def _text(self, text: str, now: float) -> Event:
        self.last_id, self.last_write = self.last_id + 1, now
        return TextEvent(self.last_id, text, self.bubbles.announce())


def reply_events(
    pump: Pump,
    settings: StreamSettings,
    *,
    stream_id: str | None = None,
    client_gone: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    observers: list[StreamObserver] | None = None,
) -> Iterator[Event]:
    """Yield the typed events of a running pump (text, heartbeats, at most one error, then the end) until its
    source ends, fails, or the client leaves (then no end event: nobody reads it).

    The stream is one of the process's open streams (kit.pipeline.cancel.OPEN_STREAMS) while it runs, under
    `stream_id` if its client named it. Closing this generator (the server does so when a write fails)
    cancels the source.

    >>> [type(e).__name__ for e in reply_events(start_pump(["Hi"], CancelToken(), StreamSettings()), StreamSettings())]
    ['TextEvent', 'EndEvent']
    """
    watch = _Watchers(observers or [])
    writer = _Writer(settings, watch, clock())
    OPEN_STREAMS.add(pump.cancel, stream_id)
    reason: EndReason = "client_gone"  # unless the loop reaches the end of the source
    try:
        while True:
            now = clock()
            item = pump.get(writer.wake_at(now, settings.disconnect_poll_s) - now)
            now = clock()
            if isinstance(item, str | Role):
                yield from writer.piece(item, now)
                if not (writer.hiding and isinstance(item, str)):
                    continue
                item = TIMEOUT  # hidden thinking: nothing was sent, so to the client it is a silence
            if isinstance(item, Timeout):
                yield from writer.flush(now, due_only=True)
                if client_gone():
                    log.info("client disconnected; cancelling the source")
                    return
                if pump.cancel.cancelled:
                    reason = yield from _cancelled_elsewhere(pump.cancel, writer, now)
                    yield writer.end(reason)
                    return
                yield from writer.heartbeat(now)
            else:
                reason = yield from _ended(item, pump, writer, now)
                yield writer.end(reason)
                return
    finally:
        OPEN_STREAMS.discard(pump.cancel)
        pump.close()
        watch.end(reason, pump.usage)


def _cancelled_elsewhere(cancel: CancelToken, writer: _Writer, now: float) -> Iterator[Event]:
    """Cancelled while idle, not by this loop: a stalled client (nobody reads an error), a Stop request, or
    the server stopping (which owes the client a "restarting" error). Returns the end reason."""
    if not OPEN_STREAMS.ended_by_server(cancel):
        return "client_gone"
    yield from writer.flush(now)
    yield writer.error(STOPPING)
    return "failed"


def _ended(item: Finished | Failed, pump: Pump, writer: _Writer, now: float) -> Iterator[Event]:
    """The source finished or failed: what is held back goes out, then the error if any, or the token usage the
    source reported. Returns the reason."""
    yield from writer.flush(now)
    if isinstance(item, Failed):
        log.error("source failed mid-stream", exc_info=item.error)
        yield writer.error(public_message(item.error))
        return "failed"
    # A source that obeyed a Stop request ends normally, but the reply was stopped, not finished.
    if pump.cancel.cancelled:
        return "client_gone"
    yield from writer.usage(pump.usage)
    return "finished"
