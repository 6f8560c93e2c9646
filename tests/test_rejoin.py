"""Replies that survive the network, over real servers: a dropped connection leaves the run going, a rejoin from
the last event id gets exactly the rest (on the same worker or, through the log in the store, on another one),
a second reader follows live, Stop still stops at once, a run nobody reads ends at its limit and frees its
thread, and a run whose worker died ends in the log with a clear error."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt

from kit import create_app
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.testing.fakes import ScriptedSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.runlog import CRASHED
from kit.web.edge import STREAM_ID_HEADER
from kit.web.rejoin import NO_RUN, RUN_ID_HEADER
from tests.helpers import bubbles, wait_until

ANSWER = [f"word{index} " for index in range(40)]
WHOLE = "".join(ANSWER)


def read(url: str, body: dict[str, object], headers: dict[str, str], keep: int | None = None) -> Reply:
    """A stream read to its end, or only its first `keep` events (then the connection is dropped)."""
    items = iter_stream(url, body, headers=headers, timeout=30)
    reply = next(items)
    assert isinstance(reply, Reply)
    for item in items:
        if isinstance(item, Received):
            reply.items.append(item)
            if keep is not None and len(reply.events) >= keep:
                items.close()  # the connection drops: no Stop
                break
    return reply


def rejoin(url: str, thread_id: str, after: str | int) -> Reply:
    return read(url + "chat-stream/rejoin", {}, {THREAD_ID_HEADER: thread_id, "Last-Event-ID": str(after)})


def kept(url: str, thread_id: str) -> list[dict[str, str]]:
    return bubbles(httpx.get(f"{url}threads/{thread_id}/messages").json())


def test_a_dropped_reply_goes_on_and_a_rejoin_gets_exactly_the_rest(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(ANSWER, delay_s=0.03)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    first = read(server.url + "chat-stream", chat_body("q"), {THREAD_ID_HEADER: thread_id}, keep=5)
    assert first.headers[RUN_ID_HEADER.lower()]
    run = httpx.get(f"{server.url}threads/{thread_id}/run").json()
    assert run["running"] and run["asked"] == [{"role": "user", "text": "q"}]
    watcher = rejoin(server.url, thread_id, 0)  # a second tab: the whole reply, live
    rest = rejoin(server.url, thread_id, first.items[-1].id or 0)  # may come after the end: from the log
    assert first.text + rest.text == WHOLE and watcher.text == WHOLE
    ids = [item.id for item in first.items + rest.items if item.payload is not None]
    assert ids == [str(number) for number in range(1, len(ids) + 1)]  # none twice, none missing
    assert wait_until(
        lambda: kept(server.url, thread_id) == [{"role": "user", "text": "q"}, {"role": "ai", "text": WHOLE}]
    )
    assert source.cancelled == 0 and httpx.get(f"{server.url}threads/{thread_id}/run").json() == {"running": False}


def test_a_rejoin_on_another_worker_streams_the_run_from_the_store(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "t.sqlite"
    here = serve(create_app(ScriptedSource(ANSWER, delay_s=0.03), thread_store=store))
    there = serve(create_app(ScriptedSource(["never"]), thread_store=store))  # a second process, same store
    thread_id = new_thread_id()
    first = read(here.url + "chat-stream", chat_body("q"), {THREAD_ID_HEADER: thread_id}, keep=3)
    rest = rejoin(there.url, thread_id, first.items[-1].id or 0)
    assert first.text + rest.text == WHOLE and rest.errors == []
    assert rejoin(there.url, thread_id, 0).text == WHOLE  # the ended run stays in the log for a while


def test_stop_still_stops_a_run_at_once(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(ANSWER, delay_s=0.05)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id, stream_id = new_thread_id(), "stop-me-0123456789abcdef"
    headers = {THREAD_ID_HEADER: thread_id, STREAM_ID_HEADER: stream_id}
    first = read(server.url + "chat-stream", chat_body("q"), headers, keep=2)
    assert httpx.post(server.url + "chat-stream/stop", content=stream_id).json() == {"stopped": True}
    assert wait_until(lambda: source.cancelled == 1, timeout=5)
    assert len(rejoin(server.url, thread_id, first.items[-1].id or 0).text) < len(WHOLE) - len(first.text)
    # A Stop posted with the run id (what a page that rejoined has) stops it as well.
    assert wait_until(lambda: httpx.get(f"{server.url}threads/{thread_id}/run").json() == {"running": False})
    second = read(server.url + "chat-stream", chat_body("again"), {THREAD_ID_HEADER: thread_id}, keep=1)
    assert httpx.post(server.url + "chat-stream/stop", content=second.headers["x-kit-run-id"]).json()["stopped"]
    assert wait_until(lambda: source.cancelled == 2, timeout=5)


def test_a_run_nobody_reads_ends_at_its_limit_and_frees_its_thread(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource([f"w{index} " for index in range(2000)], delay_s=0.01)
    app = create_app(source, thread_store=tmp_path / "t.sqlite", on_disconnect_limit_s=0.5, heartbeat_s=0.2)
    server = serve(app)
    thread_id = new_thread_id()
    read(server.url + "chat-stream", chat_body("q"), {THREAD_ID_HEADER: thread_id}, keep=1)
    assert wait_until(lambda: source.cancelled == 1, timeout=10)  # well before its 20 s end
    assert wait_until(lambda: httpx.get(f"{server.url}threads/{thread_id}/run").json() == {"running": False})
    second = read(server.url + "chat-stream", chat_body("next"), {THREAD_ID_HEADER: thread_id}, keep=1)
    assert second.status == 200  # the thread is free again
    messages = kept(server.url, thread_id)
    assert messages[0] == {"role": "user", "text": "q"} and messages[1]["text"].startswith("w0 w1")


def test_on_disconnect_cancel_stops_the_source_when_the_client_leaves(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(ANSWER, delay_s=0.05)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite", on_disconnect="cancel", heartbeat_s=0.2))
    read(server.url + "chat-stream", chat_body("q"), {THREAD_ID_HEADER: new_thread_id()}, keep=2)
    assert wait_until(lambda: source.cancelled == 1, timeout=5), (
        source.started,
        source.cancelled,
        source.completed,
        source.closed,
    )


def test_a_run_whose_worker_died_ends_with_a_clear_error(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "t.sqlite"
    server = serve(create_app(ScriptedSource(["unused"]), thread_store=store))
    thread_id = new_thread_id()
    from kit.pipeline.events import TextEvent
    from kit.threads.runlog import RunLog
    from kit.threads.store import SqliteThreadStore

    log = RunLog(SqliteThreadStore(store))
    gone = f"{socket.gethostname()}:999999999"
    log.start("dead-run-0123456789abcdef", thread_id, [{"role": "user", "text": "q"}])
    log.append("dead-run-0123456789abcdef", [TextEvent(1, "half a")])
    with sqlite3.connect(store) as connection:  # its worker was killed a minute ago: nothing refreshed it since
        connection.execute("UPDATE kit_runs SET seen = ?, worker = ?", (time.time() - 60, gone))
    started = time.monotonic()
    reply = rejoin(server.url, thread_id, 0)
    assert reply.text == "half a" and reply.errors == [CRASHED] and time.monotonic() - started < 10
    # Killed a moment ago (its log is fresh): ended as soon as a reader notices, not after the 20 s.
    log.start("gone-run-0123456789abcdef", thread_id, [{"role": "user", "text": "q"}])
    with sqlite3.connect(store) as connection:
        connection.execute("UPDATE kit_runs SET worker = ? WHERE run_id = 'gone-run-0123456789abcdef'", (gone,))
    reply = read(
        server.url + "chat-stream/rejoin", {"run_id": "gone-run-0123456789abcdef"}, {THREAD_ID_HEADER: thread_id}
    )
    assert reply.errors == [CRASHED] and reply.text == ""


def test_a_run_that_ended_here_is_not_running_while_its_end_commits(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kit.threads.runlog import RunLog
    from kit.threads.store import SqliteThreadStore
    from kit.web.live import LIVE_RUNS, LiveRun

    store = tmp_path / "t.sqlite"
    server = serve(create_app(ScriptedSource(["unused"]), thread_store=store))
    thread_id, run_id = new_thread_id(), "ending-run-0123456789abcdef"
    log = RunLog(SqliteThreadStore(store))
    log.start(run_id, thread_id, [{"role": "user", "text": "q"}])  # the log still says it runs
    run_url = f"{server.url}threads/{thread_id}/run"
    assert httpx.get(run_url).json()["running"] is True
    # This process ran it and saw its end (its transcript is kept by then); the end's log write is under way.
    ending = LiveRun(run_id, log, limit_s=60, thread_id=thread_id)
    ending.ended = True
    LIVE_RUNS[run_id] = ending
    try:
        assert httpx.get(run_url).json() == {"running": False}  # a page opening now must not rejoin it too
    finally:
        LIVE_RUNS.pop(run_id, None)


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({THREAD_ID_HEADER: "0123456789abcdef"}, 404, NO_RUN),
        ({THREAD_ID_HEADER: "0123456789abcdef", "Last-Event-ID": "x"}, 400, "Last-Event-ID"),
        ({}, 404, THREAD_ID_HEADER),
        ({THREAD_ID_HEADER: "../etc"}, 400, "thread id"),
    ],
)
def test_bad_rejoins_are_json_errors(serve, tmp_path: Path, headers: dict[str, str], status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(ScriptedSource(["Hi"]), thread_store=tmp_path / "t.sqlite"))
    response = httpx.post(server.url + "chat-stream/rejoin", headers=headers)
    assert response.status_code == status and error in response.json()["error"]
    assert httpx.get(server.url + "healthz").json() == {"status": "ok"}


def test_a_run_whose_worker_on_another_host_died_ends_with_a_clear_error_and_frees_its_thread(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    """No pid to look at on another host: the run's age in the store says it. A rejoin gets heartbeats while it
    waits, then the error in-band (never a wait forever); the thread's stale claim is taken by the next send."""
    from kit.pipeline.events import TextEvent
    from kit.threads.runlog import RunLog
    from kit.threads.runs import STALE_S, RunClaims
    from kit.threads.store import SqliteThreadStore

    store = SqliteThreadStore(tmp_path / "t.sqlite")
    server = serve(create_app(ScriptedSource(["fresh"]), thread_store=store, heartbeat_s=1.0))
    thread_id, run_id = new_thread_id(), "far-run-0123456789abcdef"
    log = RunLog(store)
    assert RunClaims(store).claim(thread_id, run_id, lambda c: log.begin(c, run_id, thread_id, [{"role": "user"}]))
    log.append(run_id, [TextEvent(1, "half a")])
    with sqlite3.connect(store.path) as connection:  # its worker, on another host, stopped a minute ago
        connection.execute("UPDATE kit_runs SET seen = ?, worker = 'elsewhere.example:4242'", (time.time() - 60,))
        connection.execute(
            "UPDATE kit_thread_runs SET seen = ?, worker = 'elsewhere.example:4242'", (time.time() - 60,)
        )
    assert httpx.get(f"{server.url}threads/{thread_id}/run").json()["running"]
    started = time.monotonic()
    items = iter_stream(server.url + "chat-stream/rejoin", {}, headers={THREAD_ID_HEADER: thread_id}, timeout=60)
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    waited = time.monotonic() - started
    assert reply.text == "half a" and reply.errors == [CRASHED]
    assert STALE_S - 1 <= waited < STALE_S + 10  # as long as a live run may stay silent, and no longer
    assert sum(item.payload is None for item in reply.items) >= STALE_S / 2  # heartbeats meanwhile (1 s each)
    assert httpx.get(f"{server.url}threads/{thread_id}/run").json() == {"running": False}
    fresh = read(server.url + "chat-stream", chat_body("again"), {THREAD_ID_HEADER: thread_id})
    assert fresh.status == 200 and fresh.text == "fresh"  # the dead run's claim was stale: the thread is free


class SlowWords(BaseChatModel):
    """A chat model that streams its words 30 ms apart (LangGraph reports each as a token of the answer)."""

    words: list[str]

    @property
    def _llm_type(self) -> str:
        return "slow-words"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(self.words)))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        for word in self.words:
            time.sleep(0.03)
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))


def test_a_dropped_resume_of_an_approval_is_rejoined_exactly(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The approvals' resume route is a run with an event log like a reply's: a page whose resumed reply drops
    rejoins it from its last event id and gets exactly the rest."""
    from kit.adapters.graphs import graph_source
    from kit.threads.store import open_store

    store = open_store(tmp_path / "t.sqlite")
    model = SlowWords(words=ANSWER)

    def ask(state: MessagesState) -> dict[str, list[BaseMessage]]:
        interrupt({"question": "Go?"})
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    app = create_app(graph_source(graph.compile(checkpointer=store.checkpointer())), thread_store=store)
    server = serve(app)
    thread_id = new_thread_id()
    headers = {THREAD_ID_HEADER: thread_id}
    read(server.url + "chat-stream", chat_body("go"), headers)
    (item,) = httpx.get(f"{server.url}threads/{thread_id}/interrupts").json()
    body = {"interrupt_id": item["id"], "answer": "yes"}
    first = read(server.url + "chat-stream/resume", body, headers, keep=5)
    assert first.status == 200 and first.headers[RUN_ID_HEADER.lower()] and 0 < len(first.text) < len(WHOLE)
    rest = rejoin(server.url, thread_id, first.items[-1].id or 0)
    assert first.text + rest.text == WHOLE and rest.errors == []
    ids = [item.id for item in first.items + rest.items if item.payload is not None]
    assert ids == [str(number) for number in range(1, len(ids) + 1)]  # none twice, none missing
    assert rejoin(server.url, thread_id, 0).text == WHOLE  # from the log, after its end
    assert wait_until(lambda: httpx.get(f"{server.url}threads/{thread_id}/run").json() == {"running": False})
    assert bubbles(httpx.get(f"{server.url}threads/{thread_id}/messages").json())[-1] == {"role": "ai", "text": WHOLE}
