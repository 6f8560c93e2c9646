"""The response loop: pump items in, coalesced SSE events and heartbeats out, one error at most."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from kit.errors import ChatError
from kit.pipeline.coalesce import Coalescer
from kit.pipeline.granularity import splitter
from kit.pipeline.observe import EndReason, StreamObserver, WriteKind
from kit.pipeline.pump import TIMEOUT, CancelToken, Failed, Pump, Timeout
from kit.pipeline.sanitize import neutralize_links, scrub_surrogates
from kit.pipeline.sources import Role, texts
from kit.pipeline.sse import HEARTBEAT, error_event, text_event
from kit.pipeline.thinking import Bubbles, check_mode, thinking_stages

log = logging.getLogger(__name__)
T = TypeVar("T")

# What the client sees when the source fails after streaming began; the traceback goes to the log.
INTERRUPTED = "The reply was interrupted by a server error. Please try again."
# What the client sees when the server process stops while its reply is streaming.
STOPPING = "The server is restarting and had to end this reply. Please send your message again."


@dataclass(frozen=True)
class StreamSettings:
    """How a reply is cut, merged and kept alive. The defaults come from `bench/` measurements."""

    granularity: str = "chunk"
    # One event per display frame (60 Hz) at most. Measured (bench/browser.py, 20,000 chars at 2,000 chars/s
    # into Deep Chat in chromium): one event per character left 36 s of main-thread long tasks and an 11.8 s
    # render lag; a 5 ms window still showed long tasks; 10-16 ms windows showed none and a lag under one
    # frame. A piece after a quiet spell still goes out at once, so slow sources pay no latency at all.
    coalesce_ms: float = 16.0
    # Caps one event's text so a huge burst still arrives in several visible steps.
    max_event_chars: int = 2048
    # Under the 5 s read timeout of a cautious proxy (and nginx's 60 s default) with margin; 7 bytes a beat.
    heartbeat_s: float = 2.0
    # How often an idle stream checks whether the client left (Stop button, closed tab).
    disconnect_poll_s: float = 0.25
    queue_size: int = 256
    stall_timeout_s: float = 30.0
    # Model output is untrusted: `javascript:` and similar link schemes are rewritten (kit.pipeline.sanitize).
    neutralize_links: bool = True
    # A reasoning model's thinking (kit.pipeline.thinking): "show" in a bubble of its own, "hide", or "inline".
    thinking: str = "show"

    def __post_init__(self) -> None:
        check_mode(self.thinking)
        splitter(self.granularity)  # raises ValueError naming the valid choices
        Coalescer(self.coalesce_ms / 1000, self.max_event_chars)  # validates both
        if self.heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be positive, not {self.heartbeat_s}")
        if self.queue_size < 1 or self.stall_timeout_s <= 0 or self.disconnect_poll_s <= 0:
            raise ValueError("queue_size, stall_timeout_s and disconnect_poll_s must be positive")


def start_pump(items: Iterable[object], cancel: CancelToken, settings: StreamSettings) -> Pump:
    """Start the producer thread on normalised, sanitised, re-cut text pieces.

    When the source raises, the stages first release the text they hold back (the last word, a
    possible link), so the client gets all the text produced before the error, then the error.
    """
    failure: list[Exception] = []
    text = scrub_surrogates(thinking_stages(_until_failure(texts(items), failure), settings.thinking))
    if settings.neutralize_links:
        text = neutralize_links(text)
    pieces = _then_raise(splitter(settings.granularity)(text), failure)
    return Pump(pieces, cancel, queue_size=settings.queue_size, stall_timeout_s=settings.stall_timeout_s).start()


_open_lock = threading.Lock()
_open_streams: set[CancelToken] = set()
_stopped_streams: set[CancelToken] = set()  # ended by end_open_streams: they owe the client an error event


def end_open_streams() -> int:
    """End every stream this process is serving, each with a final "restarting" error event.

    For a server that is shutting down (kit.serving.production calls it when a gunicorn worker is told to
    stop): instead of waiting out long replies, clients learn at once and can send again. Returns how
    many streams were ended.
    """
    with _open_lock:
        tokens = list(_open_streams)
        _stopped_streams.update(tokens)
    for token in tokens:
        token.cancel()
    return len(tokens)


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


class _Watchers:
    """Fans stream notifications out to observers; free when there are none."""

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

    def wrote(self, kind: WriteKind, data: str) -> str:
        if self.observers:
            at, nbytes = time.perf_counter(), len(data.encode())
            for observer in self.observers:
                observer.write(kind, nbytes, at)
        return data

    def end(self, reason: EndReason) -> None:
        at = time.perf_counter()
        for observer in self.observers:
            observer.end(reason, at)


def sse_events(
    pump: Pump,
    settings: StreamSettings,
    *,
    client_gone: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    observers: list[StreamObserver] | None = None,
) -> Iterator[str]:
    """Yield SSE text for a running pump until its source ends, fails, or the client leaves.

    Closing this generator (the server does so when a write fails) cancels the source.
    """
    watch = _Watchers(observers or [])
    with _open_lock:
        _open_streams.add(pump.cancel)
    coalescer = Coalescer(settings.coalesce_ms / 1000, settings.max_event_chars)
    last_write = clock()
    reason: EndReason = "client_gone"  # unless the loop reaches the end of the source
    bubbles = Bubbles(settings.thinking)  # a role is sent with the next text event, which opens a new bubble

    def text_out(text: str) -> str:
        return watch.wrote("text", text_event(text, bubbles.announce()))

    try:
        while True:
            now = clock()
            wake_at = min(last_write + settings.heartbeat_s, now + settings.disconnect_poll_s)
            deadline = coalescer.deadline()
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            item = pump.get(wake_at - now)
            now = clock()
            if isinstance(item, str):
                watch.piece(len(item))
                if bubbles.bubble is not None:
                    text = coalescer.add(item, now)
                    if text is not None:
                        last_write = now
                        yield text_out(text)
                    continue
                item = TIMEOUT  # hidden thinking: nothing to send, so to the client it is a silence
            if isinstance(item, Role):
                pending = coalescer.flush(now)  # text before the marker stays in the bubble it belongs to
                if pending is not None:
                    last_write = now
                    yield text_out(pending)
                bubbles.switch(item.name)
                watch.role(item.name)
                continue
            if isinstance(item, Timeout):
                deadline = coalescer.deadline()
                if deadline is not None and now >= deadline:
                    last_write = now
                    yield text_out(coalescer.flush(now) or "")
                elif client_gone():
                    log.info("client disconnected; cancelling the source")
                    return
                elif pump.cancel.cancelled:
                    # Cancelled from elsewhere: a stalled client (nobody reads an error), or the server stopping.
                    if pump.cancel in _stopped_streams:
                        reason = "failed"
                        pending = coalescer.flush(now)
                        if pending is not None:
                            yield text_out(pending)
                        yield watch.wrote("error", error_event(STOPPING))
                    return
                elif now - last_write >= settings.heartbeat_s:
                    last_write = now
                    yield watch.wrote("heartbeat", HEARTBEAT)
                continue
            pending = coalescer.flush(now)
            if pending is not None:
                yield text_out(pending)
            if isinstance(item, Failed):
                reason = "failed"
                log.error("source failed mid-stream", exc_info=item.error)
                # Nothing may follow the error: any later message would make Deep Chat clear its bubble.
                yield watch.wrote("error", error_event(public_message(item.error)))
            else:
                # A source that obeyed a Stop request ends normally, but the reply was stopped, not finished.
                reason = "client_gone" if pump.cancel.cancelled else "finished"
            return
    finally:
        with _open_lock:
            _open_streams.discard(pump.cancel)
            _stopped_streams.discard(pump.cancel)
        pump.close()
        watch.end(reason)
