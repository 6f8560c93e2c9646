"""Replies that survive the network: each reply on a thread is a run (kit.web.live) whose events go to the
thread store's log, a dropped connection leaves it going (`on_disconnect`), and `POST chat-stream/rejoin`
streams a thread's run from the event after the one a page has (`Last-Event-ID`), live, from any worker.

`GET threads/<id>/run` says whether the thread has a run going, with its question, for a page that opens on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from kit.errors import ChatError
from kit.pipeline.events import EndEvent, Event, HeartbeatEvent
from kit.pipeline.pump import Pump
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Message
from kit.threads.ids import THREAD_ID_HEADER, validate_thread_id
from kit.threads.runlog import RunLog
from kit.web.edge import EventsWrap, sse_response, stream_reply
from kit.web.live import TOUCH_S, LiveRun, live_run
from kit.web.runs import Slot
from kit.web.threads import ChatThreads

REJOIN_ROUTE = "/chat-stream/rejoin"
RUN_ROUTE = "/threads/<thread_id>/run"
RUN_ID_HEADER = "X-Kit-Run-Id"
"""Sent with every run's stream: the id a page's Stop may post for a stream it rejoined."""
LOG_POLL_S = 0.1  # how often a reader on another worker looks for new events in the log
NO_RUN = "no reply is running on this thread"


class NoRun(ChatError):
    status = 404


class RunStreams:
    """The runs of one mounted chat on the web side: how a reply on a thread is streamed, and the rejoin."""

    def __init__(self, threads: ChatThreads, settings: StreamSettings, runlog: RunLog | None) -> None:
        self.threads = threads
        self.settings = settings
        self.runlog = runlog  # the runs' (ThreadRuns'), whose claims start them in it

    def register_routes(self, target: Flask | Blueprint) -> None:
        target.add_url_rule(REJOIN_ROUTE, "rejoin", self.rejoin, methods=["POST"])
        target.add_url_rule(RUN_ROUTE, "thread_run", self._run_route, methods=["GET"])

    def respond(
        self, slot: Slot, pump: Pump, messages: list[Message], asked: list[Message], wrap: EventsWrap
    ) -> Response:
        """The stream of a reply; on a thread, a run with its log, which a dropped connection leaves going."""
        if slot.thread_id is None:
            return stream_reply(pump, self.settings, messages, wrap)
        runlog = slot.runlog  # started with the claim, in its commit
        if runlog is None and self.runlog is not None:
            try:
                self.runlog.start(slot.run_id, slot.thread_id, asked)
                runlog = self.runlog
            except ChatError:
                pass  # the store is down: the run can be rejoined on this worker only
        # The run's last log write frees its thread in the same commit.
        slot.release_in_log = runlog is not None
        live = LiveRun(
            slot.run_id,
            runlog,
            limit_s=self.settings.on_disconnect_limit_s,
            thread_id=slot.thread_id,
            on_end=slot.release_on if runlog is not None else None,
        )
        go_on = self.settings.on_disconnect == "continue"
        return stream_reply(
            pump,
            self.settings,
            messages,
            lambda events: live.driven(slot.guard(wrap(events), pump)),
            client_gone=live.abandoned if go_on else None,
            on_drop=live.go_on_alone if go_on else None,
            headers={RUN_ID_HEADER: slot.run_id},
        )

    def rejoin(self) -> Response:
        """`POST chat-stream/rejoin` with `X-Kit-Thread-Id` (and `Last-Event-ID`, or `{"after": n}`): the
        thread's run from the event after that one, live to its end."""
        thread_id, after, run_id = _rejoin_request()
        self.threads.check_owner(thread_id)
        live = live_run(run_id, None if run_id else thread_id)
        if live is not None:
            return sse_response(live.follow(after, self.settings.heartbeat_s), headers={RUN_ID_HEADER: live.run_id})
        found = self._logged_run(thread_id, run_id, ended_too=True)
        if found is None or self.runlog is None:
            raise NoRun(NO_RUN)
        events = follow_log(self.runlog, found, after, self.settings.heartbeat_s)
        return sse_response(events, headers={RUN_ID_HEADER: found})

    def _logged_run(self, thread_id: str, run_id: str | None, *, ended_too: bool = False) -> str | None:
        """The run with this id on this thread, or the thread's latest (running, or also ended: the page's
        connection may have dropped just before the end)."""
        if self.runlog is None:
            return None
        if run_id is not None:
            state = self.runlog.state(run_id)
            return run_id if state is not None and state["thread_id"] == thread_id else None
        latest = self.runlog.latest(thread_id)
        return latest["run_id"] if latest is not None and (ended_too or latest["ended"] is None) else None

    def _run_route(self, thread_id: str) -> Response:
        thread_id = validate_thread_id(thread_id)
        self.threads.check_owner(thread_id)
        live = live_run(None, thread_id)
        run_id = live.run_id if live is not None else self._logged_run(thread_id, None)
        ending = live_run(run_id) if live is None and run_id is not None else None
        if run_id is None or ending is not None:
            # A run of this process that has ended, its end not yet committed to the log: its transcript is kept
            # already, so a page opening now shows the reply from it and must not also rejoin it.
            return jsonify(running=False)
        asked = self.runlog.asked(run_id) if self.runlog is not None else []
        return jsonify(running=True, run_id=run_id, asked=asked)


def _rejoin_request() -> tuple[str, int, str | None]:
    header = request.headers.get(THREAD_ID_HEADER)
    if header is None:
        raise NoRun(f"a rejoin names its thread in the {THREAD_ID_HEADER} header")
    body: Any = request.get_json(silent=True) if request.content_length else {}
    body = body if isinstance(body, dict) else {}
    raw = request.headers.get("Last-Event-ID", body.get("after", 0))
    try:
        after = int(raw)
    except (TypeError, ValueError):
        raise BadRejoin('Last-Event-ID (or the body\'s "after") is the number of the last event the page has') from None
    run_id = body.get("run_id")
    return validate_thread_id(header), after, run_id if isinstance(run_id, str) else None


class BadRejoin(ChatError):
    status = 400


def follow_log(
    runlog: RunLog, run_id: str, after: int, heartbeat_s: float, clock: Callable[[], float] = time.monotonic
) -> Iterator[Event]:
    """A run's events from its log, for a reader on another worker than the one running it: polled every
    LOG_POLL_S, a heartbeat on silences, and a run whose worker died ended with an error (never a wait forever)."""
    beat_at = checked_at = fresh_at = clock()
    touched_at = -TOUCH_S  # at once: the run's worker starts writing its log when it sees a reader elsewhere
    pause = threading.Event()
    while True:
        fresh = runlog.events_after(run_id, after)
        for event in fresh:
            yield event
            after = event.id
            if isinstance(event, EndEvent):
                return
        now = clock()
        if fresh:
            beat_at = checked_at = fresh_at = now
        elif now - checked_at >= TOUCH_S:
            checked_at = now
            runlog.end_if_crashed(run_id, now - fresh_at)  # the next read gets its error and end
        if now - beat_at >= heartbeat_s:
            beat_at = now
            yield HeartbeatEvent(after)
        if now - touched_at >= TOUCH_S:
            touched_at = now
            runlog.mark_read(run_id)
        pause.wait(LOG_POLL_S)
