"""Feedback on answers over a real server (issue 27): one row per (thread, message, user), changed by a second vote,
removed by DELETE, shown with the messages, exported once with its question and answer, sent to LangSmith when
configured; bad input is a 4xx JSON error that changes nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit import create_app
from kit.testing.fakes import EchoSource
from kit.threads.feedback import FeedbackStore
from kit.threads.ids import new_thread_id
from kit.threads.store import SqliteThreadStore, ThreadStore
from tests.helpers import wait_until
from tests.postgres import postgres_cluster  # noqa: F401  (the session fixture)
from tests.test_branches_web import send, shown, six_turns
from tests.test_threads_store import store  # noqa: F401  (SQLite and PostgreSQL)


def vote(url: str, thread_id: str, message_id: str, body: Any, method: str = "PUT") -> httpx.Response:
    return httpx.request(method, f"{url}threads/{thread_id}/messages/{message_id}/feedback", json=body)


def rows_of(where: ThreadStore, thread_id: str) -> list[dict[str, Any]]:
    return [row for row in FeedbackStore(where).export() if row["thread_id"] == thread_id]


def test_a_vote_is_one_row_changed_by_a_second_and_removed_by_delete(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = serve(create_app(EchoSource(), thread_store=store))
    thread_id = new_thread_id()
    six_turns(server.url, thread_id)
    answer = shown(server.url, thread_id)[7]  # turn 4's answer
    assert answer["role"] == "ai" and "feedback" not in answer
    assert vote(server.url, thread_id, answer["id"], {"vote": "up"}).json() == {"vote": "up", "comment": ""}
    [first] = rows_of(store, thread_id)
    changed = vote(server.url, thread_id, answer["id"], {"vote": "down", "comment": "<b>wrong</b> year"})
    assert changed.status_code == 200 and changed.json() == {"vote": "down", "comment": "<b>wrong</b> year"}
    [row] = rows_of(store, thread_id)
    assert (row["vote"], row["comment"], row["created"]) == ("down", "<b>wrong</b> year", first["created"])
    assert row["updated"] >= first["updated"] and row["question"] == "q4" and row["answer"] == answer["text"]
    assert row["branch"] == [m["id"] for m in shown(server.url, thread_id)[:8]] and row["user"] == ""
    reloaded = shown(server.url, thread_id)
    assert reloaded[7]["feedback"] == {"vote": "down", "comment": "<b>wrong</b> year"}
    assert [m for m in reloaded if "feedback" in m] == [reloaded[7]]
    assert vote(server.url, thread_id, answer["id"], None, "DELETE").json() == {}
    assert rows_of(store, thread_id) == [] and "feedback" not in shown(server.url, thread_id)[7]


def test_bad_feedback_is_a_4xx_and_changes_nothing(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    user = {"name": "alice"}
    server = serve(create_app(EchoSource(), thread_store=store, thread_owner=lambda: user["name"]))
    thread_id = new_thread_id()
    six_turns(server.url, thread_id)
    messages = shown(server.url, thread_id)
    assert vote(server.url, thread_id, messages[1]["id"], {"vote": "up", "comment": "kept"}).status_code == 200
    before = rows_of(store, thread_id)
    cases = [
        (messages[0]["id"], {"vote": "up"}, 400),  # a user message
        ("999999999", {"vote": "up"}, 404),  # unknown id
        (messages[3]["id"], {"vote": "sideways"}, 400),
        (messages[3]["id"], {"vote": "up", "comment": "x" * 4001}, 400),
        (messages[3]["id"], ["up"], 400),
    ]
    for message_id, body, status in cases:
        response = vote(server.url, thread_id, message_id, body)
        assert response.status_code == status and "error" in response.json(), (body, response.text)
    assert vote(server.url, thread_id, messages[0]["id"], None, "DELETE").status_code == 400
    user["name"] = "mallory"  # another owner's thread: not there
    for method in ("PUT", "DELETE"):
        response = vote(server.url, thread_id, messages[1]["id"], {"vote": "down"}, method)
        assert response.status_code == 404 and response.json() == {"error": "no such thread"}
    user["name"] = "alice"
    assert rows_of(store, thread_id) == before and before[0]["user"] == "alice"
    assert shown(server.url, thread_id)[1]["feedback"] == {"vote": "up", "comment": "kept"}


def test_the_export_holds_each_vote_once_with_its_question_and_answer(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.sqlite"
    user = {"name": "alice"}
    server = serve(create_app(EchoSource(), thread_store=path, thread_owner=lambda: user["name"]))
    threads = [new_thread_id(), new_thread_id()]
    expected = {}
    for thread_id in threads:
        six_turns(server.url, thread_id)
        messages = shown(server.url, thread_id)
        for index in (1, 11):
            vote(server.url, thread_id, messages[index]["id"], {"vote": "down"})
            vote(server.url, thread_id, messages[index]["id"], {"vote": "up", "comment": f"c{index}"})  # changed
            expected[(thread_id, messages[index]["id"])] = (messages[index - 1]["text"], messages[index]["text"])
    written = _export(path, "jsonl", tmp_path / "votes.jsonl")
    rows = [json.loads(line) for line in written.splitlines()]
    assert sorted((r["thread_id"], r["message_id"]) for r in rows) == sorted(expected)  # each vote once
    for row in rows:
        assert (row["question"], row["answer"]) == expected[(row["thread_id"], row["message_id"])]
        assert row["vote"] == "up" and row["user"] == "alice" and row["branch"][-1] == row["message_id"]
    table = list(csv.DictReader(io.StringIO(_export(path, "csv", tmp_path / "votes.csv"))))
    assert [(r["thread_id"], r["message_id"], r["question"], r["answer"]) for r in table] == [
        (r["thread_id"], r["message_id"], r["question"], r["answer"]) for r in rows
    ]
    assert json.loads(table[0]["branch"]) == rows[0]["branch"]


def _export(path: Path, format: str, output: Path) -> str:
    command = [sys.executable, "-m", "kit", "feedback", "export", "--store", str(path), "--format", format]
    done = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4 votes exported" in done.stderr
    return output.read_text(encoding="utf-8")


class _Recorder(BaseHTTPRequestHandler):
    """A LangSmith stand-in: records every POST (path and JSON body) and answers 200."""

    posts: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def langsmith(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.posts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    from langsmith import run_trees, utils

    utils.get_env_var.cache_clear()  # langsmith caches what it read of the environment
    run_trees._CLIENT = None  # and the tracer's client, made for the first endpoint it saw
    try:
        yield server.posts  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        utils.get_env_var.cache_clear()
        run_trees._CLIENT = None


def test_a_vote_is_sent_to_langsmith_on_the_replys_root_run(serve, tmp_path: Path, langsmith) -> None:  # type: ignore[no-untyped-def]
    from langchain_core.runnables import RunnableLambda

    chain = RunnableLambda(lambda value: f"answer to {value}")
    server = serve(create_app(chain, thread_store=SqliteThreadStore(tmp_path / "t.sqlite")))
    thread_id = new_thread_id()
    reply = send(server.url, thread_id, [{"role": "user", "text": "hi"}])
    assert reply.status == 200 and "answer to" in reply.text
    answer = shown(server.url, thread_id)[1]
    assert vote(server.url, thread_id, answer["id"], {"vote": "down", "comment": "no"}).status_code == 200
    assert wait_until(lambda: any(path.startswith("/feedback") for path, _ in langsmith))
    [(_, body)] = [(path, body) for path, body in langsmith if path.startswith("/feedback")]
    sent = json.loads(body)
    assert (sent["key"], sent["score"], sent["comment"]) == ("user_vote", 0, "no")
    # The run it names is the reply's root run, as the tracer posted it.
    assert wait_until(lambda: any(sent["run_id"].encode() in body for path, body in langsmith if "/runs" in path))


def test_a_vote_on_a_checkpointed_graphs_answer_is_sent_to_langsmith_on_its_replys_root_run(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path, langsmith
) -> None:
    """A graph keeps its own thread (no transcript row): the reply's run is noted by its answer's id."""
    from langchain_core.messages import AIMessage, BaseMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import MessagesState

    from tests.test_async_sources import one_node_graph

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [AIMessage(f"answer {len(state['messages'])}")]}

    kept = SqliteThreadStore(tmp_path / "t.sqlite")
    server = serve(create_app(one_node_graph(answer, checkpointer=InMemorySaver()), thread_store=kept))
    thread_id = new_thread_id()
    assert send(server.url, thread_id, [{"role": "user", "text": "hi"}]).status == 200
    history = [{"role": "user", "text": "hi"}, {"role": "ai", "text": "answer 1"}]
    assert send(server.url, thread_id, [*history, {"role": "user", "text": "again"}]).status == 200
    first, second = (m for m in shown(server.url, thread_id) if m["role"] == "ai")
    assert kept.answer_run(thread_id, first["id"]) != kept.answer_run(thread_id, second["id"])  # a run each
    assert vote(server.url, thread_id, first["id"], {"vote": "up"}).status_code == 200
    assert wait_until(lambda: any(path.startswith("/feedback") for path, _ in langsmith))
    [(_, body)] = [(path, body) for path, body in langsmith if path.startswith("/feedback")]
    sent = json.loads(body)
    assert (sent["key"], sent["score"], sent["run_id"]) == ("user_vote", 1, kept.answer_run(thread_id, first["id"]))
    assert wait_until(lambda: any(sent["run_id"].encode() in body for path, body in langsmith if "/runs" in path))
