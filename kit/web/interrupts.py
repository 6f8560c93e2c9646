"""Approvals on the web side: `GET /threads/<id>/interrupts` (what the thread's graph waits for, for the page,
a reload or a second tab) and `POST /chat-stream/resume` (a person's decision, claimed exactly once in the
thread store before the graph goes on, the continuation streamed like a reply)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, jsonify, request

from kit.errors import ChatError
from kit.pipeline.cancel import CancelToken
from kit.pipeline.events import Event
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import SourceFn
from kit.pipeline.streaming import start_pump
from kit.threads.ids import THREAD_ID_HEADER, thread_scope, validate_thread_id
from kit.web.edge import STREAM_ID_HEADER
from kit.web.rejoin import RunStreams
from kit.web.runs import ThreadRuns
from kit.web.threads import ChatThreads

if TYPE_CHECKING:
    from kit.adapters.graphs import GraphSource

INTERRUPTS_ROUTE = "/threads/<thread_id>/interrupts"
RESUME_ROUTE = "/chat-stream/resume"
ALREADY_DECIDED = (
    "this decision was already made (another click, another tab or a stale page); "
    "reload the chat to see where the conversation is"
)


class AlreadyDecided(ChatError):
    """A second resume of one interrupt: nothing runs twice."""

    status = 409


class BadResume(ChatError):
    status = 400


class LocalClaims:
    """Claims kept in this process, for an app without a thread store (`thread_store=False`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claimed: set[tuple[str, str]] = set()

    def claim_interrupt(self, thread_id: str, interrupt_id: str) -> bool:
        with self._lock:
            fresh = (thread_id, interrupt_id) not in self._claimed
            self._claimed.add((thread_id, interrupt_id))
            return fresh

    def interrupt_claimed(self, thread_id: str, interrupt_id: str) -> bool:
        return (thread_id, interrupt_id) in self._claimed

    def release_interrupt(self, thread_id: str, interrupt_id: str) -> None:
        with self._lock:
            self._claimed.discard((thread_id, interrupt_id))


class ChatInterrupts:
    """The interrupt routes of one mounted chat; they answer only for a graph compiled with a checkpointer."""

    def __init__(
        self, source: SourceFn, settings: StreamSettings, threads: ChatThreads, runs: ThreadRuns, streams: RunStreams
    ) -> None:
        self.source = source
        self.settings = settings
        self.threads = threads
        self.runs = runs  # a resume is a run of its thread like a send (issue 26)
        self.streams = streams  # ... with an event log like a reply's: a page rejoins a resumed reply
        self.claims: Any = threads.store if threads.store is not None else LocalClaims()

    def register_routes(self, target: Flask | Blueprint) -> None:
        target.add_url_rule(INTERRUPTS_ROUTE, "thread_interrupts", self._interrupts_route, methods=["GET"])
        target.add_url_rule(RESUME_ROUTE, "resume", self.resume, methods=["POST"])

    def _graph(self) -> GraphSource | None:
        from kit.adapters.graph_threads import checkpointer_of
        from kit.adapters.graphs import GraphSource

        source = self.source
        return source if isinstance(source, GraphSource) and checkpointer_of(source.graph) is not None else None

    def pending(self, thread_id: str) -> list[dict[str, Any]]:
        """What the thread waits for, minus interrupts someone is resuming right now."""
        from kit.adapters.interrupts import pending_interrupts

        self.threads.check_owner(thread_id)
        source = self._graph()
        if source is None:
            return []
        found = pending_interrupts(source.graph, thread_id)
        return [item for item in found if not self.claims.interrupt_claimed(thread_id, item["id"])]

    def _interrupts_route(self, thread_id: str) -> Response:
        return jsonify(self.pending(validate_thread_id(thread_id)))

    def resume(self) -> Response:
        """`POST chat-stream/resume` with `X-Kit-Thread-Id` and `{"interrupt_id", "decisions" | "answer"}`."""
        from kit.adapters.interrupts import NotPending, pending_interrupts, resume_value, tools_of

        thread_id, interrupt_id, body = _resume_request()
        source = self._graph()
        if source is None:
            raise NotPending("this chat's source is not a graph with a checkpointer: it has no interrupts")
        self.threads.check_owner(thread_id)
        found = [item for item in pending_interrupts(source.graph, thread_id) if item["id"] == interrupt_id]
        if not found:
            if self.claims.interrupt_claimed(thread_id, interrupt_id):
                raise AlreadyDecided(ALREADY_DECIDED)
            raise NotPending("the thread is not waiting for this interrupt (unknown id)")
        value = resume_value(found[0], body, tools_of(source.graph))  # 400 before anything is claimed
        if not self.claims.claim_interrupt(thread_id, interrupt_id):
            raise AlreadyDecided(ALREADY_DECIDED)
        cancel = CancelToken()
        self.threads.watch_stop(request.headers.get(STREAM_ID_HEADER), cancel)
        try:
            # No question to show (asked=[]): the run's log holds the continuation, for a rejoin.
            with self.runs.starting(thread_id, cancel, []) as slot, thread_scope(thread_id):
                pump = start_pump(source.resume({interrupt_id: value}, cancel), cancel, self.settings)
        except BaseException:
            self.claims.release_interrupt(thread_id, interrupt_id)
            raise

        def released(events: Iterator[Event]) -> Iterator[Event]:
            return self._released_if_still_pending(events, source, thread_id, interrupt_id)

        return self.streams.respond(slot, pump, [], [], released)

    def _released_if_still_pending(
        self, events: Iterator[Event], source: GraphSource, thread_id: str, interrupt_id: str
    ) -> Iterator[Event]:
        """The continuation; if it ended (failed or stopped) before getting past the interrupt, the claim is
        given back so the decision can be made again (LangGraph re-runs the node from its start on resume)."""
        from kit.adapters.interrupts import pending_interrupts

        try:
            yield from events
        finally:
            try:
                still = any(item["id"] == interrupt_id for item in pending_interrupts(source.graph, thread_id))
                if still:
                    self.claims.release_interrupt(thread_id, interrupt_id)
            except ChatError:
                pass  # the store is down: the claim stays, the log says why


def _resume_request() -> tuple[str, str, dict[str, Any]]:
    header = request.headers.get(THREAD_ID_HEADER)
    if header is None:
        raise BadResume(f"a resume names its thread in the {THREAD_ID_HEADER} header")
    thread_id = validate_thread_id(header)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("interrupt_id"), str):
        raise BadResume('the body is JSON: {"interrupt_id": "...", "decisions": [...]} or {..., "answer": ...}')
    return thread_id, body["interrupt_id"], body
