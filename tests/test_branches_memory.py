"""Branch requests on a source that keeps its own threads (a checkpointed graph: kit.threads.ThreadMemory): the
web side checks them against `thread_messages` before any source starts, starts the source inside the branch's
scope, and a switch goes to `switch_branch` (issue 27; the graph's side is kit.adapters.graphs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask, jsonify

from kit.errors import ChatError
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Message
from kit.threads.branching import BadBranch, BranchRequest, NoSuchMessage, current_branch
from kit.threads.ids import new_thread_id
from kit.web.branches import ChatBranches
from kit.web.runs import ThreadRuns
from kit.web.threads import ChatThreads, Turn

BRANCH: list[Message] = [
    {"id": "h1", "role": "user", "text": "q1"},
    {"id": "a1", "role": "ai", "text": "a1"},
    {"id": "h2", "role": "user", "text": "q2"},
    {"id": "a2", "role": "ai", "text": "a2"},
]


class FakeMemory:
    """A ThreadMemory with one fixed branch that records the switches asked of it."""

    keeps_threads = True

    def __init__(self) -> None:
        self.switched: list[tuple[str, str]] = []

    def thread_messages(self, thread_id: str) -> list[Message]:
        return [dict(m) for m in BRANCH]  # type: ignore[misc]

    def switch_branch(self, thread_id: str, message_id: str) -> None:
        if message_id not in {"h1", "a1", "h2", "a2", "old-a2"}:
            raise NoSuchMessage("no such message")
        self.switched.append((thread_id, message_id))


@pytest.fixture
def chat(tmp_path: Path) -> tuple[Flask, FakeMemory, ChatBranches]:
    memory = FakeMemory()
    threads = ChatThreads(memory, store=tmp_path / "t.sqlite")
    assert threads.memory is memory
    branches = ChatBranches(threads, ThreadRuns(threads, StreamSettings()))
    app = Flask(__name__)
    threads.register_routes(app)
    branches.register_routes(app)
    app.register_error_handler(ChatError, lambda error: (jsonify(error=error.message), error.status))
    return app, memory, branches


def test_a_branch_request_is_checked_against_the_memory_and_reaches_the_source(chat) -> None:  # type: ignore[no-untyped-def]
    _, _, branches = chat
    thread_id = new_thread_id()
    sent: list[Message] = [*BRANCH, {"role": "user", "text": "q2 edited"}]
    turn = Turn(thread_id, [sent[-1]], None)
    plan = branches.plan(turn, BranchRequest("edit", "h2", "q2 edited"), sent)
    assert plan is not None and plan.messages == sent and plan.move is None  # the graph forks itself
    with turn.scope():
        assert current_branch() == BranchRequest("edit", "h2", "q2 edited")
    for asked, error in [
        (BranchRequest("edit", "a1"), BadBranch),
        (BranchRequest("regenerate", "h1"), BadBranch),
        (BranchRequest("regenerate", "nope"), NoSuchMessage),
    ]:
        with pytest.raises(error):
            branches.plan(Turn(thread_id, [], None), asked, sent)
    with pytest.raises(BadBranch):
        branches.plan(Turn(None, [], None), BranchRequest("regenerate", "a2"), sent)


def test_a_switch_goes_to_the_memory_and_answers_with_its_branch(chat) -> None:  # type: ignore[no-untyped-def]
    app, memory, _ = chat
    thread_id = new_thread_id()
    client = app.test_client()
    response = client.post(f"/threads/{thread_id}/switch", json={"message_id": "old-a2"})
    assert response.status_code == 200 and response.json == BRANCH and memory.switched == [(thread_id, "old-a2")]
    missing = client.post(f"/threads/{thread_id}/switch", json={"message_id": "gone"})
    assert missing.status_code == 404 and "error" in missing.json and len(memory.switched) == 1
