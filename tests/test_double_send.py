"""One reply at a time per thread: a second send while a reply runs (two tabs, an impatient client) gets the
chat's `double_send` policy, and afterwards the transcript or the graph's checkpoint holds every user message
once, each followed by its answer, in order. 20 threads double-sent at once, over a real server on SQLite, and on
PostgreSQL across two gunicorn processes (the first send to one, the second to the other: one run per thread holds
across processes)."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph

from kit import create_app
from kit.pipeline.cancel import current_cancel
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.testing.fakes import ScriptedSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.runs import RunClaims
from kit.threads.store import PostgresThreadStore, open_store
from kit.web.runs import REPLY_IN_PROGRESS
from tests.helpers import bubbles, wait_until
from tests.postgres import postgres_cluster  # noqa: F401  (the session fixture)
from tests.prod_server import ProdServer

PAIRS = 20
ANSWER = [f"word{index} " for index in range(40)]  # 2 s at 0.05 s a word: a second send comes mid-reply


def send(url: str, thread_id: str, text: str, started: threading.Event | None = None) -> Reply:
    """One streamed turn from a tab that sees no earlier messages; `started` is set at the first text."""
    items = iter_stream(url + "chat-stream", chat_body(text), headers={THREAD_ID_HEADER: thread_id}, timeout=60)
    reply = next(items)
    assert isinstance(reply, Reply)
    for item in items:
        if isinstance(item, Received):
            reply.items.append(item)
            if started is not None and item.payload and item.payload.get("text"):
                started.set()
    if started is not None:
        started.set()
    return reply


def double_send(urls: tuple[str, str], thread_id: str, running: Any) -> tuple[Reply, Reply]:
    """Send "first" to one server, then, while its reply runs (`running(thread_id, started)` says so), "second"
    to the other (the same one on SQLite)."""
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(send, urls[0], thread_id, "first", started)
        assert wait_until(lambda: running(thread_id, started), timeout=30)
        second = send(urls[1], thread_id, "second")
        return first.result(timeout=60), second


def pairs(urls: tuple[str, str], running: Any) -> list[tuple[str, Reply, Reply]]:
    threads = [new_thread_id() for _ in range(PAIRS)]
    with ThreadPoolExecutor(PAIRS) as pool:
        results = list(pool.map(lambda thread_id: double_send(urls, thread_id, running), threads))
    return [(thread_id, first, second) for thread_id, (first, second) in zip(threads, results, strict=True)]


# -- the apps: in this process on SQLite, or under gunicorn (imported by name) on PostgreSQL --------------------


def transcripts_app(store: str | Path, policy: str) -> Flask:
    return create_app(ScriptedSource(ANSWER, delay_s=0.05), thread_store=store, double_send=policy)


def graph_app(store: str | Path, policy: str) -> Flask:
    """gunicorn factory too: the slow graph on the store's own checkpointer."""
    opened = open_store(store)
    return create_app(slow_graph(opened.checkpointer()), thread_store=opened, double_send=policy)


@contextlib.contextmanager
def servers(serve: Any, request: pytest.FixtureRequest, tmp_path: Path, app: str, policy: str) -> Iterator[Any]:
    """(the two urls, the store's address): one server on SQLite, two gunicorn processes on PostgreSQL."""
    if request.param == "sqlite":
        store = tmp_path / "t.sqlite"
        server = serve(globals()[app](store, policy))
        yield (server.url, server.url), store
        return
    url = request.getfixturevalue("postgres_cluster").url
    factory = f"tests.test_double_send:{app}({url!r}, {policy!r})"
    with ProdServer("--workers", "1", "--app", factory) as one, ProdServer("--workers", "1", "--app", factory) as other:
        yield (one.url, other.url), url


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


def refused(reply: Reply) -> bool:
    return (
        reply.status == 409
        and reply.headers["content-type"].startswith("application/json")
        and reply.errors == [REPLY_IN_PROGRESS]
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["reject", "enqueue", "interrupt"])
def test_double_sends_on_transcripts(serve, where, tmp_path: Path, policy: str) -> None:  # type: ignore[no-untyped-def]
    with servers(serve, where, tmp_path, "transcripts_app", policy) as (urls, _):
        results = pairs(urls, lambda thread_id, started: started.is_set())
        transcripts = {
            thread_id: bubbles(httpx.get(f"{urls[1]}threads/{thread_id}/messages").json()) for thread_id, *_ in results
        }
    whole = "".join(ANSWER)
    for thread_id, first, second in results:
        kept = transcripts[thread_id]
        if policy == "reject":
            assert first.text == whole and refused(second)
            assert kept == [{"role": "user", "text": "first"}, {"role": "ai", "text": whole}]
            continue
        assert second.status == 200 and second.text == whole
        if policy == "enqueue":
            assert first.text == whole
        else:  # interrupted: the first reply keeps what it had streamed when the second came
            assert first.status == 200 and 0 < len(first.text) < len(whole) and whole.startswith(first.text)
        assert kept == [
            {"role": "user", "text": "first"},
            {"role": "ai", "text": first.text},
            {"role": "user", "text": "second"},
            {"role": "ai", "text": whole},
        ]


def slow_graph(saver: Any) -> Any:
    """A checkpointed graph whose answer takes a while (and obeys a Stop while it waits)."""

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        cancel = current_cancel()
        if cancel is not None:
            cancel.wait(1.5)  # long enough for a second send to reach the other process mid-run
        return {"messages": [AIMessage(f"answer to {state['messages'][-1].text}")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph.compile(checkpointer=saver)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["reject", "enqueue", "interrupt"])
def test_double_sends_on_checkpointed_graph_threads(serve, where, tmp_path: Path, policy: str) -> None:  # type: ignore[no-untyped-def]
    with servers(serve, where, tmp_path, "graph_app", policy) as (urls, address):
        # The same database, read from here (on PostgreSQL a connection for each thread that polls it), opened
        # before the pairs start: a first run shorter than the store's set-up would never be seen running.
        postgres = where.param == "postgres"
        store = PostgresThreadStore(address, max_connections=PAIRS) if postgres else open_store(address)
        claims = RunClaims(store)
        assert claims.holder(new_thread_id()) is None
        results = pairs(urls, lambda thread_id, _: claims.holder(thread_id) is not None)
    graph = slow_graph(store.checkpointer())
    for thread_id, first, second in results:
        state = graph.get_state({"configurable": {"thread_id": thread_id}}).values["messages"]
        kept = [(type(message), message.text) for message in state]
        if policy == "reject":
            assert first.text == "answer to first" and refused(second)
            assert kept == [(HumanMessage, "first"), (AIMessage, "answer to first")]
            continue
        assert second.status == 200 and second.text == "answer to second"
        if policy == "enqueue":
            assert first.text == "answer to first"
            assert kept == [
                (HumanMessage, "first"),
                (AIMessage, "answer to first"),
                (HumanMessage, "second"),
                (AIMessage, "answer to second"),
            ]
        else:
            # Interrupted mid-node: as with a Stop, LangGraph keeps what it had committed (the question, or not
            # even that when the stop came before its first checkpoint), never the unfinished step; nothing twice,
            # in order, and the second question has its answer.
            assert first.text in ("", "answer to first")
            assert kept[-2:] == [(HumanMessage, "second"), (AIMessage, "answer to second")]
            assert kept[:-2] in (
                [],
                [(HumanMessage, "first")],
                [(HumanMessage, "first"), (AIMessage, "answer to first")],
            )
    store.close()


def test_a_refused_send_leaves_the_server_up_and_a_later_send_runs(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(ScriptedSource(ANSWER, delay_s=0.02), thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    first, second = double_send((server.url, server.url), thread_id, lambda thread_id, started: started.is_set())
    assert refused(second) and first.text == "".join(ANSWER)
    assert send(server.url, thread_id, "third").text == "".join(ANSWER)  # the thread was freed at the end


def test_a_queued_send_sends_heartbeats_while_it_waits(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Under "enqueue" the second send's headers go out at once and heartbeats follow at the usual interval until
    the first reply ends and the second one's text comes: a proxy that cuts silent connections keeps it."""
    source = ScriptedSource(ANSWER, delay_s=0.05)  # the first reply: 2 s
    app = create_app(source, thread_store=tmp_path / "t.sqlite", double_send="enqueue", heartbeat_s=0.2)
    server = serve(app)
    thread_id, started = new_thread_id(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(send, server.url, thread_id, "first", started)
        assert started.wait(30)
        headers = {THREAD_ID_HEADER: thread_id, "Accept": "text/event-stream"}
        body = chat_body("second")
        with httpx.stream("POST", server.url + "chat-stream", json=body, headers=headers, timeout=30) as response:
            assert response.status_code == 200  # headers at once, not after the first reply
            lines, arrived = [], []
            for line in response.iter_lines():
                lines.append(line)
                arrived.append(time.monotonic())
        assert first.result(timeout=30).text == "".join(ANSWER)
    waited = next(index for index, line in enumerate(lines) if line != ": ping")  # the reply's first event
    assert waited >= 5  # about 1.5 s of wait at 0.2 s a heartbeat
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived[: waited + 1])]
    assert max(gaps) < 0.2 * 4
    text = "".join(json.loads(line[5:]).get("text", "") for line in lines if line.startswith("data:"))
    assert text == "".join(ANSWER)
    assert bubbles(httpx.get(f"{server.url}threads/{thread_id}/messages").json()) == [
        {"role": "user", "text": "first"},
        {"role": "ai", "text": "".join(ANSWER)},
        {"role": "user", "text": "second"},
        {"role": "ai", "text": "".join(ANSWER)},
    ]
