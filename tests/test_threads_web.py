"""Threads over a real server: the transcript of plain sources, a checkpointed LangGraph graph fed one turn at
a time, the owner hook, and bad input (an unknown thread, bad ids, a store that is down), each a JSON answer."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, MessagesState, StateGraph

from kit import create_app
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.testing.fakes import ScriptedSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.web.blueprint import STREAM_ID_HEADER
from tests.helpers import bubbles, wait_until


def chat(
    url: str, text: str, thread_id: str | None, history: list[dict[str, str]] | None = None, **headers: str
) -> Reply:
    """One streamed turn, as the kit's page sends it (the thread header, the visible history)."""
    sent = {THREAD_ID_HEADER: thread_id} if thread_id else {}
    items = iter_stream(url + "chat-stream", chat_body(text, history), headers={**sent, **headers})
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    return reply


def thread_messages(url: str, thread_id: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{url}threads/{thread_id}/messages", headers=headers)


def counting_graph(saver: Any) -> Any:
    """A checkpointed MessagesState graph whose answer says how many messages its state holds."""

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        asked = state["messages"][-1].text
        return {"messages": [AIMessage(f"{asked} heard; I hold {len(state['messages'])} messages")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph.compile(checkpointer=saver)


def test_a_plain_source_keeps_a_transcript_the_page_reloads(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(ScriptedSource(["Hello", " there"]), thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    assert thread_messages(server.url, thread_id).json() == []
    history: list[dict[str, str]] = []
    for question in ("one", "two"):
        assert chat(server.url, question, thread_id, history).text == "Hello there"
        history += [{"role": "user", "text": question}, {"role": "ai", "text": "Hello there"}]
    assert wait_until(lambda: bubbles(thread_messages(server.url, thread_id).json()) == history, timeout=5)
    # POST /chat keeps its transcript too, and another thread stays apart.
    other = new_thread_id()
    assert (
        httpx.post(server.url + "chat", json=chat_body("three"), headers={THREAD_ID_HEADER: other}).status_code == 200
    )
    assert bubbles(thread_messages(server.url, other).json()) == [
        {"role": "user", "text": "three"},
        {"role": "ai", "text": "Hello there"},
    ]
    assert bubbles(thread_messages(server.url, thread_id).json()) == history


def test_a_stopped_reply_keeps_what_was_streamed(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["tick "] * 400, delay_s=0.02)
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id, stream_id = new_thread_id(), new_thread_id()
    body = chat_body("count")
    headers = {THREAD_ID_HEADER: thread_id, STREAM_ID_HEADER: stream_id}
    seen, stopped = "", False
    for item in iter_stream(server.url + "chat-stream", body, headers=headers):
        if isinstance(item, Received) and item.payload:
            seen += item.payload.get("text", "")
            if seen.count("tick") >= 5 and not stopped:
                stopped = True
                assert httpx.post(server.url + "chat-stream/stop", content=stream_id).json() == {"stopped": True}
    assert wait_until(lambda: len(thread_messages(server.url, thread_id).json()) == 2, timeout=5)
    kept = bubbles(thread_messages(server.url, thread_id).json())
    assert kept[0] == {"role": "user", "text": "count"}
    assert kept[1]["role"] == "ai" and kept[1]["text"] == seen and 5 <= seen.count("tick") < 400


def test_a_checkpointed_graph_gets_one_turn_at_a_time_and_holds_each_message_once(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    saver = SqliteSaver(sqlite3.connect(tmp_path / "graph.sqlite", check_same_thread=False))
    graph = counting_graph(saver)
    server = serve(create_app(graph, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history: list[dict[str, str]] = []
    for turn, question in enumerate(("one", "two", "three")):
        reply = chat(server.url, question, thread_id, history)
        assert reply.errors == [] and reply.text == f"{question} heard; I hold {2 * turn + 1} messages"
        history += [{"role": "user", "text": question}, {"role": "ai", "text": reply.text}]
    state = graph.get_state({"configurable": {"thread_id": thread_id}}).values["messages"]
    assert [m.text for m in state] == [m["text"] for m in history]  # each message once, in order
    assert [type(m) for m in state] == [HumanMessage, AIMessage] * 3
    assert bubbles(thread_messages(server.url, thread_id).json()) == history  # from the checkpoint
    # No thread id: the kit gives the request a thread of its own, fed the whole history, deleted after.
    reply = chat(server.url, "four", None, history)
    assert reply.errors == [] and reply.text == "four heard; I hold 7 messages"
    threads = {row[0] for row in saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert threads == {thread_id}
    saver.conn.close()


def test_a_graph_without_a_checkpointer_still_gets_the_whole_history(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(counting_graph(None), thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = [{"role": "user", "text": "one"}, {"role": "ai", "text": "ok"}]
    assert chat(server.url, "two", thread_id, history).text == "two heard; I hold 3 messages"
    assert wait_until(lambda: len(thread_messages(server.url, thread_id).json()) == 2, timeout=5)  # a transcript


def test_bad_thread_ids_get_a_400_and_the_server_stays_up(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(ScriptedSource(["Hi"]), thread_store=tmp_path / "t.sqlite"))
    for bad in ("short", "x" * 65, "has spaces in it, sixteen+", "semi;colon;0123456789", "percent%2Fslash-0123456789"):
        reply = chat(server.url, "hi", bad)
        assert reply.status == 400 and "16 to 64" in reply.items[0].payload["error"], bad
        response = httpx.post(server.url + "chat", json=chat_body("hi"), headers={THREAD_ID_HEADER: bad})
        assert response.status_code == 400 and "16 to 64" in response.json()["error"]
    for bad in ("short", "x" * 65, "dots.are.not.allowed.here", "ünïcode-ünïcode-ü"):
        response = thread_messages(server.url, bad)
        assert response.status_code == 400 and "16 to 64" in response.json()["error"], bad
    assert thread_messages(server.url, new_thread_id()).json() == []  # unknown: an empty chat, not an error
    assert chat(server.url, "hi", new_thread_id()).text == "Hi"


def test_a_store_that_is_down_is_a_503_json_error_and_threads_are_intact_after(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "store"
    folder.mkdir()
    server = serve(create_app(ScriptedSource(["Hi"]), thread_store=folder / "t.sqlite"))
    thread_id = new_thread_id()
    assert chat(server.url, "before", thread_id).text == "Hi"
    assert wait_until(lambda: len(thread_messages(server.url, thread_id).json()) == 2, timeout=5)
    shutil.move(folder, tmp_path / "away")  # the store's disk is gone
    reply = chat(server.url, "during", thread_id, **{"X-Unused": "1"})
    response = thread_messages(server.url, thread_id)
    shutil.move(tmp_path / "away", folder)
    # Reading the transcript fails cleanly; a chat without an owner check needs no read before streaming,
    # so it answers, and only its transcript is lost (logged).
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "the conversation store is unavailable right now; please try again shortly"}
    assert "Traceback" not in response.text
    assert reply.status == 200 and reply.text == "Hi"
    assert [m["text"] for m in thread_messages(server.url, thread_id).json()] == ["before", "Hi"]


def test_an_owned_thread_is_a_404_for_anyone_else(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from flask import request

    def signed_in_user() -> str | None:  # an app's login would say who this is; a header stands in for it
        return request.headers.get("X-Test-User")

    app = create_app(ScriptedSource(["Hi"]), thread_store=tmp_path / "t.sqlite", thread_owner=signed_in_user)
    server = serve(app)
    thread_id = new_thread_id()
    assert chat(server.url, "mine", thread_id, **{"X-Test-User": "alice"}).text == "Hi"
    assert wait_until(lambda: len(thread_messages(server.url, thread_id, **{"X-Test-User": "alice"}).json()) == 2)
    for intruder in ({"X-Test-User": "bob"}, {}):
        response = thread_messages(server.url, thread_id, **intruder)
        assert response.status_code == 404 and response.json() == {"error": "no such thread"}
        reply = chat(server.url, "let me in", thread_id, **intruder)
        assert reply.status == 404 and reply.items[0].payload == {"error": "no such thread"}
        denied = httpx.post(server.url + "chat", json=chat_body("x"), headers={THREAD_ID_HEADER: thread_id, **intruder})
        assert denied.status_code == 404
    assert [m["text"] for m in thread_messages(server.url, thread_id, **{"X-Test-User": "alice"}).json()] == [
        "mine",
        "Hi",
    ]
    # bob's own new thread is his.
    bobs = new_thread_id()
    assert chat(server.url, "mine too", bobs, **{"X-Test-User": "bob"}).text == "Hi"
    assert thread_messages(server.url, bobs, **{"X-Test-User": "alice"}).status_code == 404


def test_a_store_that_is_down_before_streaming_is_a_503(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from flask import request

    folder = tmp_path / "store"
    folder.mkdir()
    app = create_app(
        ScriptedSource(["Hi"]),
        thread_store=folder / "t.sqlite",
        thread_owner=lambda: request.headers.get("X-Test-User"),
    )
    server = serve(app)
    shutil.rmtree(folder)
    reply = chat(server.url, "hi", new_thread_id(), **{"X-Test-User": "alice"})
    assert reply.status == 503 and reply.items[0].payload == {
        "error": "the conversation store is unavailable right now; please try again shortly"
    }
    assert httpx.get(server.url + "healthz").json() == {"status": "ok"}


@pytest.mark.timeout(300)
def test_the_demo_agent_remembers_its_thread_in_sqlite(serve, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kit.serving.demo import THREAD_STORE_ENV, build_demo_app

    monkeypatch.setenv(THREAD_STORE_ENV, str(tmp_path / "agent.sqlite"))
    server = serve(build_demo_app("agent", 0))
    thread_id, history = new_thread_id(), []
    for question in ("What is the weather in Paris?", "And in Rome?"):
        reply = chat(server.url, question, thread_id, history)
        assert reply.errors == [] and reply.text_of("ai")
        history += [{"role": "user", "text": question}, {"role": "ai", "text": reply.text_of("ai")}]
    shown = bubbles(thread_messages(server.url, thread_id).json())
    assert [b["text"] for b in shown if b["role"] == "user"] == ["What is the weather in Paris?", "And in Rome?"]
    assert [b["role"] for b in shown] == ["user", "steps", "ai"] * 2
    assert "get_weather returned: It is sunny and 22 degrees in Rome." in shown[4]["text"]
    # The memory is LangGraph's checkpoint in the SQLite file: the second turn's model read the first.
    with sqlite3.connect(tmp_path / "agent.sqlite") as db:
        assert db.execute("SELECT COUNT(DISTINCT thread_id) FROM checkpoints").fetchone() == (1,)


def test_a_blueprint_behind_an_apps_login_binds_threads_to_its_users(tmp_path: Path) -> None:
    from flask import Flask, session

    from kit import create_blueprint

    app = Flask("host")
    app.secret_key = "test only"

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return "ok"

    owner = lambda: session.get("user")  # noqa: E731  (the one hook)
    app.register_blueprint(
        create_blueprint(ScriptedSource(["Hi"]), thread_store=tmp_path / "t.sqlite", thread_owner=owner),
        url_prefix="/chat",
    )
    alice, bob = app.test_client(), app.test_client()
    alice.post("/login/alice")
    bob.post("/login/bob")
    thread = {THREAD_ID_HEADER: new_thread_id()}
    assert alice.post("/chat/chat", json=chat_body("mine"), headers=thread).json == {"text": "Hi"}
    url = f"/chat/threads/{thread[THREAD_ID_HEADER]}/messages"
    assert bubbles(alice.get(url).json) == [{"role": "user", "text": "mine"}, {"role": "ai", "text": "Hi"}]
    assert bob.get(url).status_code == 404 and bob.get(url).json == {"error": "no such thread"}
    assert bob.post("/chat/chat", json=chat_body("x"), headers=thread).status_code == 404
