"""Run a source in a producer thread behind a bounded queue, so the response can write while it blocks."""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kit.pipeline.cancel import CancelToken
from kit.pipeline.outbox import Outbox
from kit.pipeline.usage import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """The source ran to its end."""


@dataclass(frozen=True)
class Failed:
    """The source raised; the exception travels to the consumer, which decides what the client sees."""

    error: BaseException


class Timeout:
    """No item arrived within the consumer's timeout."""


TIMEOUT = Timeout()

_live_lock = threading.Lock()
_live_producers: set[threading.Thread] = set()


def receive(
    items: queue.Queue[Any] | queue.SimpleQueue[Any] | Outbox, cancel: CancelToken, poll_s: float = 0.05
) -> Iterator[Any]:
    """Yield what a worker thread puts on `items` until it puts `Finished()`; a `Failed(error)` is raised
    here. Returns early once `cancel` is set and nothing more arrives (the worker sees the token itself).

    >>> items = queue.SimpleQueue()
    >>> for item in ("a", "b", Finished()):
    ...     items.put(item)
    >>> list(receive(items, CancelToken()))
    ['a', 'b']
    """
    while True:
        try:
            item = items.get(timeout=poll_s)
        except queue.Empty:
            if cancel.cancelled:
                return
            continue
        if isinstance(item, Finished):
            return
        if isinstance(item, Failed):
            raise item.error
        yield item


def receive_grouped(items: Outbox, cancel: CancelToken, window_s: float, poll_s: float = 0.05) -> Iterator[list[Any]]:
    """`receive`, in groups, as Coalescer throttles text: after a quiet spell the first item goes at once; items
    the outbox holds (text) that come within `window_s` of the last group that had some wait until the first item
    after the window's end comes (at most one more window), and go with it; any other item goes at once with what
    waits before it; all in order, none lost. While text keeps coming, the reader sleeps through each window
    (Outbox.collect): one wake-up per window, not one per token, and at a token's arrival rather than by a timer
    (A/B, the engine process behind 4 workers, one user: 1.3-3.9% more tokens/s than waking for every token; a
    timer in the middle of a decode had cost the in-process path 3%).

    >>> items = Outbox(held=lambda item: isinstance(item, str) and len(item) == 1)
    >>> for item in ("role", "a", "b", "c", "end", Finished()):
    ...     items.put(item)
    >>> list(receive_grouped(items, CancelToken(), window_s=60))
    [['role'], ['a'], ['b', 'c', 'end']]
    """
    pending: list[Any] = []
    window_end = float("-inf")  # the end of the window opened by the last group that had held items
    streaming = False  # that group was collected through a window: more text is likely on its way
    while True:
        now = time.monotonic()
        if now < window_end and (pending or streaming):
            # Woken by the first item put after the window's end (or an urgent one); a timer only a window later.
            pending += items.collect(min(poll_s, window_end + window_s - now), wake_after=window_end)
            streaming = True
        elif not pending:
            streaming = False
            try:
                pending.append(items.get(timeout=poll_s))
            except queue.Empty:
                if cancel.cancelled:
                    return
                continue
        end = next((i for i, item in enumerate(pending) if isinstance(item, (Finished, Failed))), None)
        if end is not None:
            if end:
                yield pending[:end]
            if isinstance(pending[end], Failed):
                raise pending[end].error
            return
        now = time.monotonic()
        if pending and (now >= window_end or not all(map(items.held, pending))):
            if any(map(items.held, pending)):
                window_end = now + window_s
            yield pending
            pending = []
        elif not pending and cancel.cancelled:
            return


def close_iterator(iterator: object) -> None:
    """Close a generator now, in this thread, so that its `finally` blocks (the source's cleanup) run at once
    instead of whenever it is garbage-collected, possibly in another thread."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def live_producers() -> int:
    """How many producer threads are running now (tests use it to prove none outlives its request)."""
    with _live_lock:
        return len(_live_producers)


class Pump:
    """A producer thread that iterates `pieces` into a bounded queue until the end, an error or cancel.

    Backpressure: when the consumer stops reading for `stall_timeout_s` (a client that reads nothing),
    the producer cancels itself instead of buffering without bound. The thread runs in a copy of its
    creator's context (as `asyncio.to_thread` does), so a trace's current span reaches the source.
    `usage` is what the source reported of its token usage (filled in by the stages that read its items).
    """

    def __init__(
        self,
        pieces: Iterable[str],
        cancel: CancelToken,
        *,
        queue_size: int = 256,
        stall_timeout_s: float = 30.0,
        poll_s: float = 0.05,
        usage: Usage | None = None,
    ) -> None:
        self.cancel = cancel
        self.usage = usage if usage is not None else Usage()
        self._pieces = pieces
        # A SimpleQueue, bounded by counting: queue.Queue's condition variable woke the consumer twice a piece
        # (once to find the putter still holding its lock), 2.4 waits a token in a one-user stream.
        self._queue: queue.SimpleQueue[str | Finished | Failed] = queue.SimpleQueue()
        self._queue_size = queue_size
        self._queued = 0  # pieces put on the queue (the producer's count)
        self._removed = 0  # pieces taken off the queue (the consumer's count)
        self._room = threading.Event()  # set by the consumer when it takes and the producer waits for room
        self._waiting_for_room = False
        self._taken: deque[str | Finished | Failed] = deque()  # drained from the queue, not yet returned
        self._stall_timeout_s = stall_timeout_s
        self._poll_s = poll_s
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._produce,), name="kit-pump", daemon=True)

    def start(self) -> Pump:
        with _live_lock:
            _live_producers.add(self._thread)
        self._thread.start()
        return self

    def get(self, timeout: float) -> str | Finished | Failed | Timeout:
        """The next item, or TIMEOUT when none came within `timeout` seconds."""
        if self._taken:
            return self._taken.popleft()
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return TIMEOUT
        # Take whatever else is already queued without waiting: a blocking get per piece costs a
        # round trip between the threads, which capped a fast source at a third of the naive baseline.
        try:
            while True:
                self._taken.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        self._removed += 1 + len(self._taken)
        if self._waiting_for_room:
            self._room.set()
        return item

    def close(self) -> None:
        """Cancel the source; the producer thread then finishes by itself. Safe to call more than once."""
        self.cancel.cancel()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the producer to finish (the source closed, a graph's checkpoint
        written); True when it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _queue_piece(self, item: str | Finished | Failed) -> bool:
        stalled_since = time.monotonic()
        while not self.cancel.cancelled:
            if self._queued - self._removed < self._queue_size:
                self._queue.put(item)
                self._queued += 1
                return True
            # Full: ask the consumer to signal its next take, then look again (it may have taken meanwhile).
            self._room.clear()
            self._waiting_for_room = True
            if self._queued - self._removed >= self._queue_size:
                self._room.wait(self._poll_s)
            self._waiting_for_room = False
            if time.monotonic() - stalled_since > self._stall_timeout_s:
                log.warning("client read nothing for %.0f s; cancelling the source", self._stall_timeout_s)
                self.cancel.cancel()
        return False

    def _produce(self) -> None:
        iterator = iter(())
        try:
            iterator = iter(self._pieces)
            for piece in iterator:
                if not self._queue_piece(piece):
                    break
            else:
                self._queue_piece(Finished())
        except Exception as error:
            self._queue_piece(Failed(error))
        finally:
            try:
                close_iterator(iterator)  # in the thread that ran it
            except Exception:
                log.exception("closing the source failed")
            with _live_lock:
                _live_producers.discard(self._thread)
