"""One reply at a time on a thread: a send claims its thread before the source starts; a second send while a
reply runs gets the chat's `double_send` policy (reject with a 409, enqueue behind it, or interrupt it). The
claim is given back once the reply has ended and its source has finished (a graph's checkpoint written)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from kit.errors import ChatError
from kit.pipeline.cancel import OPEN_STREAMS, CancelToken
from kit.pipeline.events import EndEvent, Event
from kit.pipeline.pump import Pump, close_iterator
from kit.pipeline.settings import StreamSettings
from kit.threads.runs import REFRESH_S, LocalRunClaims, RunClaims
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
        self.claims: Any = RunClaims(threads.store) if threads.store is not None else LocalRunClaims()

    @contextlib.contextmanager
    def starting(self, thread_id: str | None, cancel: CancelToken) -> Iterator[Slot]:
        """Claim the thread (by the policy) for a reply that starts inside the block; a failure to start gives
        the claim back. No thread: a slot that claims nothing."""
        slot = self._claim(thread_id, cancel)
        try:
            yield slot
        except BaseException:
            slot.release(None)
            raise

    def _claim(self, thread_id: str | None, cancel: CancelToken) -> Slot:
        if thread_id is None:
            return Slot(self.claims, None, "")
        run_id = secrets.token_hex(16)
        deadline = time.monotonic() + self.wait_s
        stopped: str | None = None
        while not _try_claim(self.claims, thread_id, run_id):
            if self.policy == "reject" or time.monotonic() >= deadline:
                raise ReplyInProgress(REPLY_IN_PROGRESS)
            holder = self.claims.holder(thread_id)
            if self.policy == "interrupt" and holder is not None and holder != stopped:
                stopped = holder
                self._stop(holder)
            threading.Event().wait(POLL_S)
        # The run answers to a stop under its id, here and on other workers (policy "interrupt", a Stop).
        OPEN_STREAMS.add(cancel, run_id)
        self.threads.watch_stop(run_id, cancel)
        return Slot(self.claims, thread_id, run_id)

    def _stop(self, run_id: str) -> None:
        log.info("double send: stopping run %s", run_id)
        if not OPEN_STREAMS.stop(run_id):
            self.threads.post_stop(run_id)


def _try_claim(claims: Any, thread_id: str, run_id: str) -> bool:
    # A store that is down does not stop the chat (it answers, only its transcript is lost, as before runs):
    # the claim is then this process's alone.
    try:
        return bool(claims.claim(thread_id, run_id))
    except ChatError:
        log.warning("thread %s: the store is down; this reply runs without a claim on its thread", thread_id)
        return True


class Slot:
    """A claimed thread: refreshed while the reply's events pass, released when they end."""

    def __init__(self, claims: Any, thread_id: str | None, run_id: str) -> None:
        self.claims = claims
        self.thread_id = thread_id
        self.run_id = run_id
        self._refreshed = time.monotonic()
        self._released = False

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
        """Free the thread once the source has finished (waited for up to SOURCE_EXIT_S)."""
        if self.thread_id is None or self._released:
            return
        self._released = True
        if pump is not None and not pump.join(SOURCE_EXIT_S):
            log.warning(
                "thread %s: the source did not finish in %.0f s; freeing the thread", self.thread_id, SOURCE_EXIT_S
            )
        try:
            self.claims.release(self.thread_id, self.run_id)
        except ChatError:
            log.warning("thread %s: the run's claim could not be released; it expires by itself", self.thread_id)
