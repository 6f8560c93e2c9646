"""A run this process serves: its events so far (for readers that rejoin here), the readers following it, the
batched writes of its event log to the thread store (for readers on other workers), and what happens when its
client's connection drops (with `on_disconnect="continue"` the run goes on, read by nobody, up to a limit)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from kit.errors import ChatError
from kit.pipeline.events import EndEvent, ErrorEvent, Event, HeartbeatEvent
from kit.pipeline.pump import close_iterator
from kit.threads.runlog import RunLog
from kit.threads.runs import Then

log = logging.getLogger(__name__)

FLUSH_S = 0.25  # a shared run's log is written at most this often (and at its end): readers elsewhere lag by this
TOUCH_S = 2.0  # how often a run tells the log it is alive, and a reader elsewhere that it reads

LIVE_RUNS: dict[str, LiveRun] = {}
"""The runs this process is serving, by run id (a run leaves when it ends)."""
_live_lock = threading.Lock()


class LiveRun:
    """One run's events, readers and log writes.

    >>> from kit.pipeline.events import TextEvent, EndEvent
    >>> run = LiveRun("run-1", None, limit_s=60)
    >>> for event in (TextEvent(1, "Hi"), TextEvent(2, " there"), EndEvent(3, "finished")):
    ...     run.add(event)
    >>> [event.id for event in run.follow(after=1, heartbeat_s=1)]
    [2, 3]
    """

    def __init__(
        self,
        run_id: str,
        runlog: RunLog | None,
        *,
        limit_s: float,
        thread_id: str = "",
        on_end: Then | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = run_id
        self.on_end = on_end  # joins the end's log write (the thread freed in the same commit)
        self.thread_id = thread_id
        self.runlog = runlog
        self.limit_s = limit_s
        self.clock = clock
        self.events: list[Event] = []
        self.ended = False
        self._changed = threading.Condition()
        self._readers = 1  # the request that started the run reads it
        self._alone_since: float | None = None
        self._unwritten: list[Event] = []
        self._written_at = clock()
        self._read_checked_at = clock()
        self._shared = False

    def add(self, event: Event) -> None:
        """An event of the run, from whoever drives it; the log is written when due."""
        with self._changed:
            if not isinstance(event, HeartbeatEvent):
                self.events.append(event)
                self._unwritten.append(event)
            self.ended = self.ended or isinstance(event, EndEvent)
            self._changed.notify_all()
        now = self.clock()
        if isinstance(event, EndEvent | ErrorEvent):
            self._write(now, then=self.on_end if isinstance(event, EndEvent) else None)
        elif self._shared_now(now) and now - self._written_at >= FLUSH_S:
            self._write(now, touch=isinstance(event, HeartbeatEvent) and now - self._written_at >= TOUCH_S)

    def _shared_now(self, now: float) -> bool:
        """Whether anyone may read the run from the log: its client left (a reload may land on another worker),
        or a reader on another worker follows it. Until then only its end is written (one commit per run)."""
        if self._shared or self.runlog is None:
            return self._shared
        if now - self._read_checked_at >= TOUCH_S:
            self._read_checked_at = now
            with contextlib.suppress(ChatError):
                self._shared = self.runlog.read_since(self.run_id) is not None
        return self._shared

    def _write(self, now: float, *, touch: bool = False, then: Then | None = None) -> None:
        with self._changed:
            batch, self._unwritten = self._unwritten, []
        if self.runlog is None or not (batch or touch or then):
            return
        self._written_at = now
        try:
            if batch or then:
                self.runlog.append(self.run_id, batch, then)
            else:
                self.runlog.touch(self.run_id)
        except ChatError:
            log.warning("run %s: its event log could not be written (the store is down)", self.run_id)

    def follow(self, after: int, heartbeat_s: float) -> Iterator[Event]:
        """The run's events with an id above `after`, live, up to its end; a heartbeat after each silence."""
        index = 0
        self._attach()
        try:
            while True:
                with self._changed:
                    while index < len(self.events) and self.events[index].id <= after:
                        index += 1
                    if index == len(self.events) and not self.ended:
                        self._changed.wait(heartbeat_s)
                    fresh, index = self.events[index:], len(self.events)
                    ended = self.ended
                yield from fresh
                if ended and not fresh:
                    return
                if not fresh:
                    yield HeartbeatEvent(self.events[-1].id if self.events else 0)
        finally:
            self.detach()

    def _attach(self) -> None:
        with self._changed:
            self._readers += 1

    def detach(self) -> None:
        """A reader left (its connection dropped, or it read to the end)."""
        with self._changed:
            self._readers -= 1
            if self._readers <= 0:
                self._alone_since = self.clock()

    def abandoned(self) -> bool:
        """Nobody has read the run for its limit (here, or on another worker through the log)."""
        with self._changed:
            alone_since = self._alone_since if self._readers <= 0 else None
        now = self.clock()
        if alone_since is None or now - alone_since < self.limit_s:
            return False
        if self.runlog is not None and now - self._read_checked_at >= TOUCH_S:
            self._read_checked_at = now
            try:
                read = self.runlog.read_since(self.run_id)
            except ChatError:
                read = None
            if read is not None and time.time() - read < self.limit_s:
                return False
        return True

    def go_on_alone(self, events: Iterator[Event]) -> None:
        """The client's connection dropped mid-run: drive the rest of the run in a thread of its own (the
        request's thread is gone), so that a page that rejoins finds it going and the transcript gets all of it.
        The run ends by itself, at the latest when nobody has read it for its limit."""
        self.detach()
        self._shared = True
        self._write(self.clock())  # what the client had, for a page that rejoins on another worker
        threading.Thread(target=self._drain, args=(events,), name=f"kit-run-{self.run_id[:8]}", daemon=True).start()

    def _drain(self, events: Iterator[Event]) -> None:
        try:
            for _ in events:
                pass  # each event reaches the log and the readers on its way (see `driven`)
        except Exception:
            log.exception("run %s failed while nobody read it", self.run_id)

    def driven(self, events: Iterator[Event]) -> Iterator[Event]:
        """The events of the run as its driver yields them, each added to the run on the way; the run is one
        of this process's live runs from now to its end."""
        with _live_lock:
            LIVE_RUNS[self.run_id] = self
        return self._driven(events)

    def _driven(self, events: Iterator[Event]) -> Iterator[Event]:
        try:
            for event in events:
                self.add(event)
                yield event
        finally:
            close_iterator(events)  # the reply first (its transcript, its thread's claim), then the readers learn
            if not self.ended:
                self.add(EndEvent((self.events[-1].id if self.events else 0) + 1, "client_gone"))
            with _live_lock:
                LIVE_RUNS.pop(self.run_id, None)


def live_run(run_id: str | None = None, thread_id: str | None = None) -> LiveRun | None:
    """The run with this id, or the thread's running run, if this process serves it."""
    with _live_lock:
        if run_id is not None:
            return LIVE_RUNS.get(run_id)
        return next((run for run in LIVE_RUNS.values() if run.thread_id == thread_id and not run.ended), None)
