"""The transcript keeps attachments: a thread's messages list each user message's files (Deep Chat's `files`, with a
`src` on the thread's file route), the bytes are kept once however often they are attached, owners apply, and a
checkpointed graph's reload shows the files from its own messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import MessagesState

from kit import create_app
from kit.adapters.graphs import graph_source
from kit.pipeline.files import data_url
from kit.threads.store import ThreadStore
from tests.documents import PNG, SECRET
from tests.helpers import bubbles
from tests.postgres import postgres_cluster  # noqa: F401  (the session fixture)
from tests.test_async_sources import one_node_graph
from tests.test_files import QUESTION, Recorder, post
from tests.test_threads_store import store  # noqa: F401  (SQLite and PostgreSQL)

THREAD = "files-thread-0123456789"
FILES = [("secret.txt", SECRET.encode(), "text/plain"), ("photo.png", PNG, "image/png")]


def test_a_reload_lists_the_files_and_serves_them_from_the_store_kept_once(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.sqlite"
    server = serve(create_app(Recorder(), thread_store=path))
    headers = {"X-Kit-Thread-Id": THREAD}
    assert post(server.url, FILES, **headers).status_code == 200
    assert post(server.url, FILES[1:], text="The same picture again", **headers).status_code == 200
    shown = httpx.get(f"{server.url}/threads/{THREAD}/messages").json()
    assert [(m["role"], m["text"]) for m in shown] == [
        ("user", QUESTION),
        ("ai", "ok"),
        ("user", "The same picture again"),
        ("ai", "ok"),
    ]
    text_file, image = shown[0]["files"]
    assert (text_file["name"], text_file["type"]) == ("secret.txt", "any")
    assert (image["name"], image["type"]) == ("photo.png", "image")
    assert shown[2]["files"] == [image]  # the same bytes, the same address
    got = httpx.get(f"{server.url}/{image['src']}")
    assert got.status_code == 200 and got.content == PNG and got.headers["Content-Type"] == "image/png"
    got = httpx.get(f"{server.url}/{text_file['src']}")
    assert got.content == SECRET.encode() and got.headers["Content-Type"] == "application/octet-stream"
    assert (
        got.headers["Content-Disposition"].startswith("attachment;")
        and "sandbox" in got.headers["Content-Security-Policy"]
    )
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM kit_file_blobs").fetchone() == (2,)
    # Another thread cannot reach the file by its hash.
    assert (
        httpx.get(f"{server.url}/threads/other-thread-0123456789/files/{image['src'].rsplit('/', 1)[1]}").status_code
        == 404
    )
    assert httpx.get(f"{server.url}/threads/{THREAD}/files/not-a-hash").status_code == 404


def test_owners_apply_to_files(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = {"id": "alice"}
    server = serve(create_app(Recorder(), thread_store=tmp_path / "t.sqlite", thread_owner=lambda: user["id"]))
    assert post(server.url, FILES[1:], **{"X-Kit-Thread-Id": THREAD}).status_code == 200
    src = httpx.get(f"{server.url}/threads/{THREAD}/messages").json()[0]["files"][0]["src"]
    assert httpx.get(f"{server.url}/{src}").content == PNG
    user["id"] = "mallory"
    assert httpx.get(f"{server.url}/{src}").status_code == 404
    assert httpx.get(f"{server.url}/threads/{THREAD}/messages").status_code == 404


def test_the_store_keeps_files_of_messages_and_gives_them_back_without_content(store: ThreadStore) -> None:  # noqa: F811
    files = [
        {
            "name": "a.txt",
            "type": "text/plain",
            "size": 2,
            "kind": "text",
            "content": "Hi",
            "sha256": "ab",
            "data": b"Hi",
        }
    ]
    store.append(THREAD, [{"role": "user", "text": "see", "files": files}, {"role": "ai", "text": "seen"}])
    assert bubbles(store.messages(THREAD)) == [
        {
            "role": "user",
            "text": "see",
            "files": [{"name": "a.txt", "type": "text/plain", "size": 2, "kind": "text", "sha256": "ab"}],
        },
        {"role": "ai", "text": "seen"},
    ]
    assert store.file(THREAD, "ab") == (
        {"name": "a.txt", "type": "text/plain", "size": 2, "kind": "text", "sha256": "ab"},
        b"Hi",
    )
    assert store.file("another-thread-000000", "ab") is None
    store.append(THREAD, [{"role": "user", "text": "again", "files": files}])  # the same bytes: kept once
    assert len(store.messages(THREAD)) == 3 and store.file(THREAD, "ab") is not None


def test_a_checkpointed_graph_reload_shows_the_files_from_its_messages(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def node(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [AIMessage("read")]}

    graph = one_node_graph(node, checkpointer=InMemorySaver())
    server = serve(create_app(graph_source(graph), thread_store=tmp_path / "t.sqlite"))
    assert post(server.url, FILES, **{"X-Kit-Thread-Id": THREAD}).status_code == 200
    shown = bubbles(httpx.get(f"{server.url}/threads/{THREAD}/messages").json())
    assert shown == [
        {
            "role": "user",
            "text": QUESTION,
            "files": [
                {"name": "secret.txt", "type": "any"},
                {"name": "photo.png", "type": "image", "src": data_url({"type": "image/png", "content": PNG})},
            ],
        },
        {"role": "ai", "text": "read"},
    ]


def test_a_file_attached_on_a_later_turn_reaches_a_checkpointed_graph(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """From the second turn on the graph gets only the new message (its checkpoint holds the rest): its files too."""
    received: list[object] = []

    def node(state: MessagesState) -> dict[str, list[BaseMessage]]:
        received.append(state["messages"][-1].content)
        return {"messages": [AIMessage("read")]}

    graph = one_node_graph(node, checkpointer=InMemorySaver())
    server = serve(create_app(graph_source(graph), thread_store=tmp_path / "t.sqlite"))
    headers = {"X-Kit-Thread-Id": THREAD}
    first = httpx.post(f"{server.url}/chat", json={"messages": [{"role": "user", "text": "Hello"}]}, headers=headers)
    assert first.status_code == 200
    earlier = [{"role": "user", "text": "Hello"}, {"role": "ai", "text": "read"}]
    assert post(server.url, FILES, earlier=earlier, **headers).status_code == 200
    blocks = received[-1]
    assert isinstance(blocks, list), blocks
    assert any(isinstance(b, dict) and SECRET in str(b.get("text", "")) for b in blocks), blocks
    assert any(isinstance(b, dict) and b.get("type") == "image_url" for b in blocks), blocks


def test_a_follow_up_on_the_thread_reads_the_earlier_text_file_again_from_the_store(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    server = serve(create_app(recorder, thread_store=tmp_path / "t.sqlite"))
    headers = {"X-Kit-Thread-Id": THREAD}
    assert post(server.url, FILES[:1], **headers).status_code == 200
    # What Deep Chat sends next (seen in chromium): the text file by name only, as `{"type": "any", "ref": {}}`.
    earlier = {"role": "user", "text": QUESTION, "files": [{"name": "secret.txt", "type": "any", "ref": {}}]}
    body = {"messages": [earlier, {"role": "ai", "text": "ok"}, {"role": "user", "text": "Say it again?"}]}
    assert httpx.post(f"{server.url}/chat", json=body, headers=headers, timeout=30).status_code == 200
    (again,) = recorder.calls[-1][0]["files"]
    assert (again["kind"], again["content"]) == ("text", SECRET)
    kept = httpx.get(f"{server.url}/threads/{THREAD}/messages").json()
    assert [m["text"] for m in kept] == [QUESTION, "ok", "Say it again?", "ok"] and "files" not in kept[2]
