"""Threads under gunicorn with two worker processes on PostgreSQL: a chat continues and reloads on the other
worker, Stop reaches the stream on whichever worker holds it, and a worker killed mid-chat loses nothing that
was already answered.

To choose the worker a request reaches, the test pauses the other one (SIGSTOP): a paused process accepts
nothing, so the kernel hands every new connection to the one left running. The apps gunicorn serves are the
factories below (gunicorn imports them by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask

from kit import create_app
from kit.pipeline.cancel import CancelToken
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import PostgresThreadStore
from kit.web.blueprint import STREAM_ID_HEADER
from tests.helpers import bubbles, wait_until
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)
from tests.prod_server import WORKER_HEADER, ProdServer, named_by_worker

pytestmark = pytest.mark.timeout(180)


# -- the apps gunicorn serves ---------------------------------------------------------------------------


def _counting_graph(saver: Any) -> Any:
    from langchain_core.messages import AIMessage, BaseMessage
    from langgraph.graph import START, MessagesState, StateGraph

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [AIMessage(f"{state['messages'][-1].text}: I hold {len(state['messages'])} messages")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph.compile(checkpointer=saver)


def ticks(messages: list[dict[str, Any]], cancel: CancelToken) -> Iterator[str]:
    """`count N`: N numbered ticks, 50 ms apart; anything else: how many messages the page sent."""
    words = str(messages[-1]["text"]).split()
    if words[:1] != ["count"]:
        yield f"{len(messages)} messages seen"
        return
    for index in range(int(words[1])):
        if cancel.wait(0.05):
            return
        yield f"{index} "


def threads_app(url: str, kind: str) -> Flask:
    """gunicorn factory: a checkpointed graph on PostgresSaver ("graph") or a plain source ("ticks"), with the
    thread store on the same PostgreSQL; each response names its worker."""
    store = PostgresThreadStore(url)
    source = _counting_graph(store.checkpointer()) if kind == "graph" else ticks
    return named_by_worker(create_app(source, thread_store=store))


# -- the tests ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def turn(url: str, text: str, thread_id: str, history: list[dict[str, str]]) -> Reply:
    items = iter_stream(url + "chat-stream", chat_body(text, history), headers={THREAD_ID_HEADER: thread_id})
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    return reply


def worker_of(reply: Reply | httpx.Response) -> int:
    return int({name.lower(): value for name, value in reply.headers.items()}[WORKER_HEADER.lower()])


def messages_of(url: str, thread_id: str) -> httpx.Response:
    return httpx.get(f"{url}threads/{thread_id}/messages", timeout=10)


def prod_server(cluster: PostgresCluster, kind: str) -> ProdServer:
    return ProdServer("--workers", "2", "--app", f"tests.test_threads_prod:threads_app({cluster.url!r}, {kind!r})")


def test_a_graph_chat_continues_and_reloads_on_the_other_worker(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    with prod_server(postgres_cluster, "graph") as server:
        thread_id, history = new_thread_id(), []
        first = turn(server.url, "one", thread_id, history)
        assert first.text == "one: I hold 1 messages"
        history += [{"role": "user", "text": "one"}, {"role": "ai", "text": first.text}]
        one = worker_of(first)
        other = next(pid for pid in server.worker_pids if pid != one)
        with paused(one):
            second = turn(server.url, "two", thread_id, history)
            assert worker_of(second) == other and second.text == "two: I hold 3 messages"
            history += [{"role": "user", "text": "two"}, {"role": "ai", "text": second.text}]
            reload = messages_of(server.url, thread_id)
            assert worker_of(reload) == other and bubbles(reload.json()) == history
        with paused(other):
            third = turn(server.url, "three", thread_id, history)
            assert worker_of(third) == one and third.text == "three: I hold 5 messages"


def test_stop_reaches_the_stream_on_another_worker(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    with prod_server(postgres_cluster, "ticks") as server:
        thread_id, stream_id = new_thread_id(), new_thread_id()
        headers = {THREAD_ID_HEADER: thread_id, STREAM_ID_HEADER: stream_id}
        items = iter_stream(server.url + "chat-stream", chat_body("count 400"), headers=headers)
        reply = next(items)
        assert isinstance(reply, Reply)
        holder = worker_of(reply)
        other = next(pid for pid in server.worker_pids if pid != holder)
        seen = ""
        for item in items:
            if isinstance(item, Received) and item.payload:
                seen += item.payload["text"]
                if seen.count(" ") >= 5:
                    break
        with paused(holder):  # the stop beacon can only land on the other worker
            stop = httpx.post(server.url + "chat-stream/stop", content=stream_id, timeout=10)
            assert stop.json() == {"stopped": False} and worker_of(stop) == other  # not running there: posted
        for item in items:  # the client keeps reading, as a proxy that hides the disconnect would
            if isinstance(item, Received) and item.payload:
                seen += item.payload.get("text", "")
        count = seen.count(" ")
        assert 5 <= count < 100, seen  # ended by the stop (within a poll or two), not after 400 ticks
        assert wait_until(lambda: len(bubbles(messages_of(server.url, thread_id).json())) == 2, timeout=5)
        assert bubbles(messages_of(server.url, thread_id).json())[1] == {"role": "ai", "text": seen}


def test_a_worker_killed_mid_chat_loses_nothing_already_answered(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    with prod_server(postgres_cluster, "ticks") as server:
        thread_id, history = new_thread_id(), []
        first = turn(server.url, "hello", thread_id, history)
        assert first.text == "1 messages seen"
        history += [{"role": "user", "text": "hello"}, {"role": "ai", "text": first.text}]
        assert wait_until(lambda: bubbles(messages_of(server.url, thread_id).json()) == history, timeout=5)
        items = iter_stream(
            server.url + "chat-stream", chat_body("count 400", history), headers={THREAD_ID_HEADER: thread_id}
        )
        reply = next(items)
        assert isinstance(reply, Reply)
        seen = ""
        for item in items:
            if isinstance(item, Received) and item.payload:
                seen += item.payload["text"]
                if seen.count(" ") >= 3:
                    os.kill(worker_of(reply), signal.SIGKILL)  # mid-reply
                    break
        with pytest.raises(httpx.HTTPError):
            for _item in items:
                pass
        # The answered turn is intact, from whichever worker answers now, and the chat goes on.
        assert bubbles(messages_of(server.url, thread_id).json()) == history
        after = turn(server.url, "still there?", thread_id, history)
        assert after.text == "3 messages seen"


def test_a_reply_dropped_on_one_worker_is_rejoined_exactly_on_the_other(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    whole = "".join(f"{index} " for index in range(60))
    with prod_server(postgres_cluster, "ticks") as server:
        workers: set[tuple[int, int]] = set()
        for _attempt in range(10):  # until a rejoin lands on the other worker than the one running the reply
            thread_id = new_thread_id()
            items = iter_stream(
                server.url + "chat-stream", chat_body("count 60"), headers={THREAD_ID_HEADER: thread_id}
            )
            reply = next(items)
            assert isinstance(reply, Reply)
            got = []
            for item in items:
                if isinstance(item, Received) and item.payload:
                    got.append(item)
                    if len(got) == 3:
                        items.close()  # the connection drops mid-reply: the run goes on
                        break
            headers = {THREAD_ID_HEADER: thread_id, "Last-Event-ID": got[-1].id or "0"}
            rest_items = iter_stream(server.url + "chat-stream/rejoin", {}, headers=headers)
            rejoined = next(rest_items)
            assert isinstance(rejoined, Reply)
            rejoined.items.extend(item for item in rest_items if isinstance(item, Received))
            assert "".join(item.payload["text"] for item in got if item.payload) + rejoined.text == whole
            assert rejoined.errors == []
            workers.add((worker_of(reply), worker_of(rejoined)))
            if any(first != second for first, second in workers):
                break
        assert any(first != second for first, second in workers), workers
