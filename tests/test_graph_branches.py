"""Branches of a checkpointed graph's thread (issue 27), at the source: ids on every bubble, an edit and a regenerate
fork from the checkpoint before that turn (the model gets exactly the branch), the old branches stay reachable
(`versions`, `switch_branch`), across two graph objects on one database (two workers) on SQLite and PostgreSQL,
bad ids are 4xx errors that change nothing, and approvals work on a branch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, MessagesState, StateGraph

from kit.adapters.graphs import GraphSource, graph_source
from kit.adapters.interrupts import pending_interrupts
from kit.pipeline.cancel import CancelToken
from kit.pipeline.sources import ANSWER_ROLE, Role
from kit.serving import demo
from kit.testing.tool_model import ScriptedToolModel
from kit.threads.branching import BadBranch, BranchRequest, NoSuchMessage, branch_scope
from kit.threads.ids import new_thread_id, thread_scope
from kit.threads.store import ThreadStore, open_store
from tests.postgres import postgres_cluster  # noqa: F401  (a fixture)


class Recorder:
    """A graph's model: records the texts of the state it was given, answers `answer <n> to <question>`."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []

    def __call__(self, state: MessagesState) -> dict[str, list[BaseMessage]]:
        self.received.append([message.text for message in state["messages"]])
        return {"messages": [AIMessage(f"answer {len(self.received)} to {state['messages'][-1].text}")]}


def recording_graph(saver: Any, recorder: Recorder) -> GraphSource:
    graph = StateGraph(MessagesState)
    graph.add_node("answer", recorder)
    graph.add_edge(START, "answer")
    return graph_source(graph.compile(checkpointer=saver))


def say(source: GraphSource, thread_id: str, text: str, branch: BranchRequest | None = None) -> str:
    """One turn as the web side starts it: inside the thread's and the branch request's scopes."""
    with thread_scope(thread_id), branch_scope(branch):
        items = list(source([{"role": "user", "text": text}], CancelToken()))
    return answer_text(items)


def answer_text(items: list[Any]) -> str:
    """The answer's text among a reply's items (pieces of text, Role markers between bubbles, usage)."""
    role, answer = ANSWER_ROLE, ""
    for item in items:
        role = item.name if isinstance(item, Role) else role
        answer += item if isinstance(item, str) and role == ANSWER_ROLE else ""
    return answer


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [message["text"] for message in messages]


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ThreadStore, ThreadStore]]:
    """Two stores on one database, as two worker processes have (each its own connections and saver)."""
    where = tmp_path / "t.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_cluster").url
    first, second = open_store(where), open_store(where)
    yield first, second
    first.close()
    second.close()


def six_turns(source: GraphSource, thread_id: str) -> list[dict[str, Any]]:
    for turn in range(1, 7):
        say(source, thread_id, f"turn {turn}")
    return source.thread_messages(thread_id)


def test_every_bubble_has_a_stable_id_and_only_forked_turns_have_versions(stores: Any) -> None:
    worker_a, worker_b = stores
    recorder = Recorder()
    a = recording_graph(worker_a.checkpointer(), recorder)
    b = recording_graph(worker_b.checkpointer(), recorder)
    thread_id = new_thread_id()
    shown = six_turns(a, thread_id)
    assert texts(shown) == [text for n in range(1, 7) for text in (f"turn {n}", f"answer {n} to turn {n}")]
    ids = [message["id"] for message in shown]
    assert len(set(ids)) == 12 and all(isinstance(id_, str) and id_ for id_ in ids)
    assert not any("versions" in message for message in shown)
    assert b.thread_messages(thread_id) == shown  # another worker, the same ids
    assert a.thread_messages(new_thread_id()) == []


def test_an_edit_forks_before_that_turn_and_the_old_turns_stay_reachable(stores: Any) -> None:
    worker_a, worker_b = stores
    recorder = Recorder()
    a = recording_graph(worker_a.checkpointer(), recorder)
    b = recording_graph(worker_b.checkpointer(), recorder)  # the other worker
    thread_id = new_thread_id()
    before = six_turns(a, thread_id)
    turn3 = before[4]
    assert say(a, thread_id, "turn 3, edited", BranchRequest("edit", turn3["id"], "turn 3, edited")) == (
        "answer 7 to turn 3, edited"
    )
    # The model got exactly turns 1-2 and the edited turn 3.
    assert recorder.received[-1] == [*texts(before[:4]), "turn 3, edited"]
    after = b.thread_messages(thread_id)
    assert texts(after) == [*texts(before[:4]), "turn 3, edited", "answer 7 to turn 3, edited"]
    assert [m["id"] for m in after[:4]] == [m["id"] for m in before[:4]]
    edited = after[4]
    assert edited["versions"] == {"index": 2, "count": 2, "ids": [turn3["id"], edited["id"]]}
    assert not any("versions" in message for index, message in enumerate(after) if index != 4)
    # Back to the first version (from the other worker): the old turns 3-6, as they were, 1 / 2 on turn 3.
    b.switch_branch(thread_id, turn3["id"])
    back = a.thread_messages(thread_id)
    assert [m["id"] for m in back] == [m["id"] for m in before] and texts(back) == texts(before)
    assert back[4]["versions"] == {"index": 1, "count": 2, "ids": [turn3["id"], edited["id"]]}
    # A new turn goes on from the branch shown; then the edited branch is one switch away again.
    say(a, thread_id, "turn 7")
    assert recorder.received[-1] == [*texts(before), "turn 7"]
    a.switch_branch(thread_id, edited["id"])
    assert texts(b.thread_messages(thread_id)) == texts(after)


def test_regenerate_twice_then_switch_back_to_the_first_answer(stores: Any) -> None:
    worker_a, worker_b = stores
    recorder = Recorder()
    a = recording_graph(worker_a.checkpointer(), recorder)
    b = recording_graph(worker_b.checkpointer(), recorder)
    thread_id = new_thread_id()
    say(a, thread_id, "one")
    say(a, thread_id, "two")
    first = a.thread_messages(thread_id)
    for expected in ("answer 3 to two", "answer 4 to two"):
        answer = a.thread_messages(thread_id)[-1]
        assert say(b, thread_id, "", BranchRequest("regenerate", answer["id"])) == expected
        assert recorder.received[-1] == ["one", "answer 1 to one", "two"]  # the branch up to the question
    shown = a.thread_messages(thread_id)
    assert texts(shown) == ["one", "answer 1 to one", "two", "answer 4 to two"]
    versions = shown[-1]["versions"]
    assert versions["index"] == 3 and versions["count"] == 3 and versions["ids"][0] == first[-1]["id"]
    assert shown[-1]["id"] == versions["ids"][2] and "versions" not in shown[2]  # on the answer, not the question
    a.switch_branch(thread_id, versions["ids"][0])
    back = b.thread_messages(thread_id)
    assert texts(back) == texts(first) and back[-1]["versions"] == {**versions, "index": 1}
    # A switch to the branch already shown writes nothing.
    saver = worker_a.checkpointer()
    newest = saver.get_tuple({"configurable": {"thread_id": thread_id}}).config
    a.switch_branch(thread_id, versions["ids"][0])
    assert saver.get_tuple({"configurable": {"thread_id": thread_id}}).config == newest


def test_bad_branch_requests_are_4xx_and_change_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "t.sqlite")
    recorder = Recorder()
    source = recording_graph(store.checkpointer(), recorder)
    thread_id = new_thread_id()
    say(source, thread_id, "one")
    shown = source.thread_messages(thread_id)
    saver = store.checkpointer()
    newest = saver.get_tuple({"configurable": {"thread_id": thread_id}}).config
    cases = [
        (BranchRequest("edit", "no-such-id", "x"), NoSuchMessage, 404),
        (BranchRequest("regenerate", "no-such-id"), NoSuchMessage, 404),
        (BranchRequest("regenerate", shown[0]["id"]), BadBranch, 400),  # a user message
        (BranchRequest("edit", shown[1]["id"], "x"), BadBranch, 400),  # an answer
    ]
    for request, error, status in cases:
        with pytest.raises(error) as raised:
            say(source, thread_id, "x", request)
        assert raised.value.status == status
    with pytest.raises(NoSuchMessage):
        source.switch_branch(thread_id, "no-such-id")
    with pytest.raises(NoSuchMessage):  # a thread never seen
        say(source, new_thread_id(), "x", BranchRequest("regenerate", shown[1]["id"]))
    assert saver.get_tuple({"configurable": {"thread_id": thread_id}}).config == newest
    assert len(recorder.received) == 1 and source.thread_messages(thread_id) == shown
    store.close()


def test_reading_a_50_message_thread_with_two_branches_is_fast(stores: Any) -> None:
    worker_a, worker_b = stores
    source = recording_graph(worker_a.checkpointer(), Recorder())
    thread_id = new_thread_id()
    for turn in range(25):
        say(source, thread_id, f"turn {turn}")
    first = source.thread_messages(thread_id)
    say(source, thread_id, "turn 12, edited", BranchRequest("edit", first[24]["id"], "turn 12, edited"))
    for turn in range(13, 25):
        say(source, thread_id, f"turn {turn} again")
    other = recording_graph(worker_b.checkpointer(), Recorder())  # a worker that never read this thread

    def timed(read: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        return read(), time.perf_counter() - started

    shown, cold = timed(lambda: other.thread_messages(thread_id))
    warm = min(timed(lambda: other.thread_messages(thread_id))[1] for _ in range(5))
    assert len(shown) == 50 and shown[24]["versions"]["count"] == 2
    assert other.thread_messages(thread_id) == source.thread_messages(thread_id)
    _, switched = timed(lambda: other.switch_branch(thread_id, first[24]["id"]))
    assert texts(source.thread_messages(thread_id)) == texts(first)
    checkpoints = len(list(worker_a.checkpointer().list({"configurable": {"thread_id": thread_id}})))
    print(
        f"\nthread_messages, 50 messages, 2 branches, {checkpoints} checkpoints: "
        f"first read {cold * 1000:.1f} ms, then {warm * 1000:.1f} ms; switch_branch {switched * 1000:.1f} ms"
    )
    assert warm < 0.1  # a read deserialises only the checkpoints written since the last one


def email_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The scripted model's tool call: an email to whoever the user names."""
    return "send_email", {"to": text, "subject": "Lunch", "body": "Noon?"}


def test_an_approval_waits_and_resumes_on_an_edited_branch(stores: Any) -> None:
    worker_a, _worker_b = stores
    demo.SENT_EMAILS.clear()
    agent = demo.demo_agent(worker_a, ScriptedToolModel(tool_call_for=email_call), approvals=True)
    source = graph_source(agent, steps_role="steps")
    thread_id = new_thread_id()
    say(source, thread_id, "bob")
    (waiting,) = pending_interrupts(agent, thread_id)
    asked = source.thread_messages(thread_id)
    assert asked[0]["text"] == "bob" and asked[-1]["role"] == "approval"
    say(source, thread_id, "carol", BranchRequest("edit", asked[0]["id"], "carol"))
    (pending,) = pending_interrupts(agent, thread_id)
    assert pending["actions"][0]["args"]["to"] == "carol" and demo.SENT_EMAILS == []
    with thread_scope(thread_id):
        resumed = list(source.resume({pending["id"]: {"decisions": [{"type": "approve"}]}}, CancelToken()))
    assert resumed and demo.SENT_EMAILS == [{"to": "carol", "subject": "Lunch", "body": "Noon?"}]
    shown = source.thread_messages(thread_id)
    assert shown[0]["text"] == "carol" and shown[0]["versions"]["index"] == 2
    assert shown[-1]["role"] == "ai" and shown[-1]["text"].startswith("Done:")
    # Back to bob's version: it waits for its decision again.
    source.switch_branch(thread_id, asked[0]["id"])
    assert [m["role"] for m in source.thread_messages(thread_id)][-1] == "approval"
    (again,) = pending_interrupts(agent, thread_id)
    assert again["actions"][0]["args"]["to"] == "bob" and waiting["actions"] == again["actions"]
    demo.SENT_EMAILS.clear()
