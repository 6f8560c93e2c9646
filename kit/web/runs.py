"""One reply at a time on a thread: a send claims its thread before the source starts; a second send while a
reply runs gets the chat's `double_send` policy (reject with a 409, enqueue behind it, or interrupt it). The
claim is given back once the reply has ended and its source has finished (a graph's checkpoint written)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kit.errors import ChatError
from kit.pipeline.cancel import OPEN_STREAMS, CancelToken
from kit.pipeline.events import EndEvent, Event
from kit.pipeline.pump import Pump, close_iterator
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Message
from kit.threads.runlog import RunLog
from kit.threads.runs import REFRESH_S, LocalRunClaims, RunClaims, Then
from kit.web.threads import ChatThreads

log = logging.getLogger(__name__)

REPLY_IN_PROGRESS = (
    "a reply is still being written on this thread: wait for it to finish (or press Stop), then send again"
)
POLL_S = 0.05  # how often a waiting send looks whether the thread is free
SOURCE_EXIT_S = 10.0  # how long a run waits for its source to finish before it frees the thread anyway


class ReplyInProgress(ChatError):
    """A send on a thread whose reply is still running (policy "reject", or a wait that ran out)."""

    status = 409


class ThreadRuns:
    """The runs of one mounted chat."""

    def __init__(self, threads: ChatThreads, settings: StreamSettings) -> None:
        self.threads = threads
        self.policy = settings.double_send
        self.wait_s = settings.double_send_wait_s
        store = threads.store
        self.claims: Any = RunClaims(store) if store is not None else LocalRunClaims()
        self.runlog = RunLog(store, keep_s=settings.run_log_keep_s) if store is not None else None

    @contextlib.contextmanager
    def starting(
        self,
        thread_id: str | None,
        cancel: CancelToken,
        asked: list[Message] | None = None,
        *,
        queue: bool = False,
        then: Then | None = None,
    ) -> Iterator[Slot]:
        """Claim the thread (by the policy) for a reply that starts inside the block; a failure to start gives
        the claim back. With `asked` (the question), the claim's commit also starts the run in the event log
        (`slot.runlog`). With `queue`, an "enqueue" send that finds the thread busy does not wait here: its slot
        is `queued`, and `slot.wait()` (called where the reply's heartbeats flow) takes the claim. `then(connection)`
        writes more on the claim's transaction (issue 27: a new version becomes the thread's branch). No thread: a
        slot that claims nothing."""
        slot = self._claim(thread_id, cancel, asked, queue=queue, then=then)
        try:
            yield slot
        except BaseException:
            slot.release(None)
            raise

    def _claim(
        self, thread_id: str | None, cancel: CancelToken, asked: list[Message] | None, *, queue: bool, then: Then | None
    ) -> Slot:
        if thread_id is None:
            return Slot(self.claims, None, "")
        run_id = secrets.token_hex(16)
        runlog = self.runlog if asked is not None else None
        begin = _both(None if runlog is None else lambda c: runlog.begin(c, run_id, thread_id, asked or []), then)
        logged = runlog is not None
        claimed = _try_claim(self.claims, thread_id, run_id, begin, logged)
        if not claimed and queue and self.policy == "enqueue":
            # Its run is started in the log by whoever streams it; the claim, when it comes, writes no run.
            slot = Slot(self.claims, thread_id, run_id)
            slot.wait = lambda: self._wait(thread_id, run_id, then, cancel, logged=False)
            slot.queued = True
            return slot
        if claimed:
            self._answer_stops(run_id, cancel)
        else:
            claimed = self._wait(thread_id, run_id, begin, cancel, logged=logged)
        return Slot(self.claims, thread_id, run_id, runlog if claimed == "logged" else None)

    def _wait(self, thread_id: str, run_id: str, begin: Then | None, cancel: CancelToken, *, logged: bool) -> str:
        """Take the claim by the policy ("reject": at once or a 409; "interrupt": stop the holder first)."""
        deadline = time.monotonic() + self.wait_s
        stopped: str | None = None
        while not (claimed := _try_claim(self.claims, thread_id, run_id, begin, logged)):
            if self.policy == "reject" or time.monotonic() >= deadline:
                raise ReplyInProgress(REPLY_IN_PROGRESS)
            holder = self.claims.holder(thread_id)
            if self.policy == "interrupt" and holder is not None and holder != stopped:
                stopped = holder
                self._stop(holder)
            if cancel.wait(POLL_S):
                break  # stopped while waiting: the source sees the stop and ends at once
        self._answer_stops(run_id, cancel)
        return claimed

    def _answer_stops(self, run_id: str, cancel: CancelToken) -> None:
        # The run answers to a stop under its id, here and on other workers (policy "interrupt", a Stop).
        OPEN_STREAMS.add(cancel, run_id)
        self.threads.watch_stop(run_id, cancel)

    def _stop(self, run_id: str) -> None:
        log.info("double send: stopping run %s", run_id)
        if not OPEN_STREAMS.stop(run_id):
            self.threads.post_stop(run_id)


def _both(first: Then | None, second: Then | None) -> Then | None:
    """Two writes on one transaction (either may be None)."""
    if first is None or second is None:
        return first or second

    def both(connection: Any) -> None:
        first(connection)
        second(connection)

    return both


def _try_claim(claims: Any, thread_id: str, run_id: str, begin: Then | None, logged: bool) -> str:
    """ "logged" (claimed, the run started in the log by `begin`), "claimed" (without a log) or "" (busy)."""
    # A store that is down does not stop the chat (it answers, only its transcript is lost, as before runs):
    # the claim is then this process's alone.
    try:
        return ("logged" if logged else "claimed") if claims.claim(thread_id, run_id, begin) else ""
    except ChatError:
        log.warning("thread %s: the store is down; this reply runs without a claim on its thread", thread_id)
        return "claimed"


def after_claim(slot: Slot, start: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """A queued reply's items: the claim waited for first (in the pump's thread, so the reply's heartbeats flow
    meanwhile and proxies keep the connection), then the source started. A wait that runs out is an in-band
    error; a stop meanwhile ends the reply before its source starts."""
    if slot.wait():
        yield from start()


class Slot:
    """A claimed thread: refreshed while the reply's events pass, released when they end."""

    def __init__(self, claims: Any, thread_id: str | None, run_id: str, runlog: RunLog | None = None) -> None:
        self.claims = claims
        self.thread_id = thread_id
        self.run_id = run_id
        self.runlog = runlog  # the run's log, when the claim started it there
        self.release_in_log = False  # the run's last log write frees the thread, in its commit (`release_on`)
        self.queued = False  # an "enqueue" send on a busy thread: `wait()` takes the claim (in the pump's thread)
        self.wait: Callable[[], str] = lambda: "claimed"
        self._refreshed = time.monotonic()
        self._released = False
        self._finished = False

    def guard(self, events: Iterator[Event], pump: Pump) -> Iterator[Event]:
        """The events as they are; the thread stays claimed until they end and the source has finished."""
        if self.thread_id is None:
            return events
        return self._guarded(events, pump)

    def _guarded(self, events: Iterator[Event], pump: Pump) -> Iterator[Event]:
        try:
            for event in events:
                if isinstance(event, EndEvent):
                    # Free the thread before the client learns of the end: a send right after it must not be
                    # refused. (The reply is over; closing it runs its last steps, its transcript included.)
                    close_iterator(events)
                    self._finish(pump)
                    if not self.release_in_log:
                        self.release(pump)
                elif time.monotonic() - self._refreshed > REFRESH_S:
                    self._refreshed = time.monotonic()
                    with contextlib.suppress(ChatError):  # the store is down: the claim may go stale
                        self.claims.refresh(self.thread_id, self.run_id)
                yield event
        finally:
            close_iterator(events)  # the reply first (a for loop leaves it open): its source is cancelled now
            self.release(pump)

    def release(self, pump: Pump | None) -> None:
        """Free the thread once the source has finished (waited for up to SOURCE_EXIT_S). Without a pump the
        reply never started: its run leaves the log in the same commit."""
        if self.thread_id is None or self._released:
            return
        self._released = True
        self._finish(pump)
        runlog, run_id = self.runlog, self.run_id
        forget = None if pump is not None or runlog is None else lambda connection: runlog.forget(connection, run_id)
        try:
            self.claims.release(self.thread_id, run_id, forget)
        except ChatError:
            log.warning("thread %s: the run's claim could not be released; it expires by itself", self.thread_id)

    def release_on(self, connection: Any) -> None:
        """Free the thread on the transaction of the run's last log write (one commit ends the run); if that
        commit fails, the claim expires by itself."""
        if self.thread_id is not None and not self._released:
            self._released = True
            self.claims.release_on(connection, self.thread_id, self.run_id)

    def _finish(self, pump: Pump | None) -> None:
        if pump is None or self._finished:
            return
        self._finished = True
        if not pump.join(SOURCE_EXIT_S):
            log.warning(
                "thread %s: the source did not finish in %.0f s; freeing the thread", self.thread_id, SOURCE_EXIT_S
            )
