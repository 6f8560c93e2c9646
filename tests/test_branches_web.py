"""Branches of a transcript over a real server (issue 27): edit an earlier user message, regenerate an answer,
switch between versions; the source gets exactly the branch; bad input is a 4xx JSON error that changes nothing;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from kit import create_app
from kit.serving.client import Received, Reply, iter_stream, multipart_body
from kit.testing.fakes import EchoSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import ThreadStore
from tests.helpers import wait_until
from tests.postgres import postgres_cluster  # noqa: F401  (the session fixture)
from tests.test_threads_store import store  # noqa: F401  (SQLite and PostgreSQL)

Messages = list[dict[str, Any]]


def send(url: str, thread_id: str | None, messages: Messages, kit: dict[str, str] | None = None) -> Reply:
    """One streamed turn as the kit's page sends it, with the branch field when given."""
    body: dict[str, Any] = {"messages": messages, **({"kit": kit} if kit else {})}
    headers = {THREAD_ID_HEADER: thread_id} if thread_id else {}
    items = iter_stream(url + "chat-stream", body, headers=headers)
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    return reply


def shown(url: str, thread_id: str) -> Messages:
    response = httpx.get(f"{url}threads/{thread_id}/messages")
    assert response.status_code == 200
    return list(response.json())


def plain(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in messages]


def six_turns(url: str, thread_id: str) -> Messages:
    history: Messages = []
    for turn in range(1, 7):
        history.append({"role": "user", "text": f"q{turn}"})
        reply = send(url, thread_id, history)
        history.append({"role": "ai", "text": reply.text})
    return history


def test_edit_regenerate_and_switch(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = EchoSource()
    server = serve(create_app(source, thread_store=store))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    first = shown(server.url, thread_id)
    assert plain(first) == plain(history) and len({m["id"] for m in first}) == 12
    assert not any("versions" in m for m in first)

    # Edit turn 3: the source gets exactly turns 1-2 and the edited turn 3, whatever the page sent.
    edited = send(server.url, thread_id, [*history, {"role": "user", "text": "q3 edited"}], {"edit": first[4]["id"]})
    assert edited.status == 200
    assert plain(source.received[-1]) == [*plain(history[:4]), ("user", "q3 edited")]
    after_edit = shown(server.url, thread_id)
    assert plain(after_edit) == [*plain(history[:4]), ("user", "q3 edited"), ("ai", edited.text)]
    assert after_edit[4]["versions"] == {"index": 2, "count": 2, "ids": [first[4]["id"], after_edit[4]["id"]]}

    # The old branch is reachable: switch to the old turn 3, and back.
    switched = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": first[4]["id"]})
    assert switched.status_code == 200
    assert plain(switched.json()) == plain(history) and switched.json()[4]["versions"]["index"] == 1
    assert shown(server.url, thread_id) == switched.json()  # every tab and worker: the next GET
    back = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": after_edit[4]["id"]})
    assert plain(back.json()) == plain(after_edit)

    # Regenerate the last answer twice, then switch back to the first answer.
    answers = [after_edit[5]]
    for _ in range(2):
        page = plain_messages(shown(server.url, thread_id))
        again = send(server.url, thread_id, page, {"regenerate": answers[-1]["id"]})
        assert plain(source.received[-1]) == plain(after_edit[:5])
        answers.append(shown(server.url, thread_id)[5])
        assert answers[-1]["text"] == again.text
    assert len({a["text"] for a in answers}) == 3
    assert answers[-1]["versions"] == {"index": 3, "count": 3, "ids": [a["id"] for a in answers]}
    back = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": answers[0]["id"]})
    assert back.json()[5]["text"] == answers[0]["text"] and back.json()[5]["versions"]["index"] == 1

    # A new turn continues the current branch (below the first answer).
    send(server.url, thread_id, [*plain_messages(back.json()), {"role": "user", "text": "q4 again"}])
    assert plain(source.received[-1]) == [*plain(back.json()), ("user", "q4 again")]
    assert plain(shown(server.url, thread_id))[:6] == plain(back.json())


def test_a_source_sees_the_ids_the_page_and_the_messages_route_show(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = EchoSource()
    server = serve(create_app(source, thread_store=store))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    ids = [m["id"] for m in shown(server.url, thread_id)]
    assert len(set(ids)) == 12
    # The sixth turn got the five before it with their ids; its new question had none yet.
    assert [m.get("id") for m in source.received[-1]] == [*ids[:10], None]
    assert send(server.url, thread_id, history, {"regenerate": ids[-1]}).status == 200
    assert [m.get("id") for m in source.received[-1]] == ids[:11]  # the branch up to the question, ids and all


def plain_messages(messages: Messages) -> Messages:
    return [{"role": m["role"], "text": m["text"]} for m in messages]


def test_bad_branch_requests_change_nothing(serve, store: ThreadStore) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = EchoSource()
    server = serve(create_app(source, thread_store=store, thread_owner=lambda: "alice"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    runs = len(source.received)
    asked = [*history, {"role": "user", "text": "x"}]
    cases = [
        (thread_id, {"edit": "999999999"}, 404),  # unknown id
        (thread_id, {"edit": "not-a-number"}, 404),
        (thread_id, {"edit": before[1]["id"]}, 400),  # edit on an answer
        (thread_id, {"regenerate": before[0]["id"]}, 400),  # regenerate on a user message
        (thread_id, {"delete": before[0]["id"]}, 400),  # no such action
        (None, {"regenerate": before[1]["id"]}, 400),  # no thread header
    ]
    for thread, kit, status in cases:
        reply = send(server.url, thread, asked, kit)
        assert reply.status == status, (kit, reply.status)
        assert "error" in reply.events[0] if reply.events else True
    for message_id, status in (("999999999", 404), ("", 400)):
        response = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": message_id})
        assert response.status_code == status and "error" in response.json()
    assert shown(server.url, thread_id) == before and len(source.received) == runs


def test_another_owners_thread_is_not_there(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = {"name": "alice"}
    source = EchoSource()
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite", thread_owner=lambda: user["name"]))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    user["name"] = "mallory"
    runs = len(source.received)
    reply = send(server.url, thread_id, history, {"regenerate": before[-1]["id"]})
    switched = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": before[0]["id"]})
    assert reply.status == 404 and switched.status_code == 404 and switched.json() == {"error": "no such thread"}
    user["name"] = "alice"
    assert shown(server.url, thread_id) == before and len(source.received) == runs


class GatedSource(EchoSource):
    """An EchoSource whose runs wait for a gate, so that a test can act while a reply runs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def __call__(self, messages: Messages, cancel: Any) -> Iterator[str]:  # type: ignore[override]
        pieces = super().__call__(messages, cancel)
        return self._after_gate(pieces, cancel)

    def _after_gate(self, pieces: Iterator[str], cancel: Any) -> Iterator[str]:
        while not self.gate.is_set():
            if cancel.wait(0.01):
                return
        yield from pieces


def test_a_run_on_the_thread_refuses_switch_and_branches(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = GatedSource()
    source.gate.set()
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    source.gate.clear()
    running = threading.Thread(target=send, args=(server.url, thread_id, [*history, {"role": "user", "text": "q7"}]))
    running.start()
    try:
        assert wait_until(lambda: httpx.get(f"{server.url}threads/{thread_id}/run").json()["running"])
        switched = httpx.post(f"{server.url}threads/{thread_id}/switch", json={"message_id": before[4]["id"]})
        again = send(server.url, thread_id, history, {"regenerate": before[-1]["id"]})
        assert switched.status_code == 409 and again.status == 409
    finally:
        source.gate.set()
        running.join(10)
    assert plain(shown(server.url, thread_id))[:12] == plain(before)


def test_a_regenerate_that_brings_nothing_keeps_the_answer_it_was_to_replace(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    silent = {"on": False}

    def source(messages: Messages) -> list[str]:
        return [] if silent["on"] else [f"answer to {messages[-1]['text']}"]

    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    silent["on"] = True
    assert send(server.url, thread_id, history, {"regenerate": before[-1]["id"]}).status == 200
    assert shown(server.url, thread_id) == before


def test_post_chat_regenerates_and_edits_too(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = EchoSource()
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    headers = {THREAD_ID_HEADER: thread_id}
    body = {"messages": history, "kit": {"regenerate": before[3]["id"]}}  # turn 2's answer
    again = httpx.post(f"{server.url}chat", json=body, headers=headers)
    assert again.status_code == 200 and plain(source.received[-1]) == plain(history[:3])
    after = shown(server.url, thread_id)
    assert plain(after) == [*plain(history[:3]), ("ai", again.json()["text"])] and after[3]["versions"]["count"] == 2
    body = {"messages": [{"role": "user", "text": "q1 edited"}], "kit": {"edit": before[0]["id"]}}
    edited = httpx.post(f"{server.url}chat", json=body, headers=headers)
    assert edited.status_code == 200 and plain(source.received[-1]) == [("user", "q1 edited")]
    assert plain(shown(server.url, thread_id)) == [("user", "q1 edited"), ("ai", edited.json()["text"])]
    assert httpx.post(f"{server.url}chat", json={**body, "kit": {"edit": "12345"}}, headers=headers).status_code == 404


def test_an_edit_is_the_current_branch_as_soon_as_its_run_starts(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = GatedSource()
    source.gate.set()
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    source.gate.clear()
    edit = [*history, {"role": "user", "text": "q3 edited"}]
    running = threading.Thread(target=send, args=(server.url, thread_id, edit, {"edit": before[4]["id"]}))
    running.start()
    try:
        run = f"{server.url}threads/{thread_id}/run"
        assert wait_until(lambda: httpx.get(run).json()["running"])
        # A page opening now: the branch before the edited turn, then the run's question, then the reply live.
        assert httpx.get(run).json()["asked"] == [{"role": "user", "text": "q3 edited"}]
        assert shown(server.url, thread_id) == before[:4]
    finally:
        source.gate.set()
        running.join(10)
    assert plain(shown(server.url, thread_id))[4] == ("user", "q3 edited")


def test_an_edit_with_a_file_in_a_multipart_body(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = EchoSource()
    server = serve(create_app(source, thread_store=tmp_path / "t.sqlite"))
    thread_id = new_thread_id()
    history = six_turns(server.url, thread_id)
    before = shown(server.url, thread_id)
    body = multipart_body(
        [*history[:2], {"role": "user", "text": "q2, with a note"}], [("note.txt", b"hi", "text/plain")]
    )
    body["data"]["kit"] = json.dumps({"edit": before[2]["id"]})
    reply = httpx.post(f"{server.url}chat", headers={THREAD_ID_HEADER: thread_id}, **body)
    assert reply.status_code == 200, reply.text
    got = source.received[-1]
    assert plain(got) == [*plain(history[:2]), ("user", "q2, with a note")]
    assert [(f["name"], f["content"]) for f in got[-1]["files"]] == [("note.txt", "hi")]
    edited = shown(server.url, thread_id)[2]
    assert edited["versions"]["count"] == 2 and [f["name"] for f in edited["files"]] == ["note.txt"]
    body["data"]["kit"] = "{not json"
    assert httpx.post(f"{server.url}chat", headers={THREAD_ID_HEADER: thread_id}, **body).status_code == 400
