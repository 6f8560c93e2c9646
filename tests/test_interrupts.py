"""Approvals on the server, on SQLite and PostgreSQL: the demo agent (send_email behind LangChain's
HumanInTheLoopMiddleware, driven by a scripted tool-calling model) stops for a decision; approve, edit and reject
resume it; a plain `interrupt()` takes a free-text answer; a second resume is a 409 and the tool ran once; bad
decisions are 4xx JSON errors that leave the thread waiting and resumable."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import interrupt

from kit import create_app
from kit.adapters.graphs import graph_source
from kit.pipeline.cancel import current_cancel
from kit.pipeline.sse import parse_line, sse_lines
from kit.serving import demo
from kit.testing.tool_model import ScriptedToolModel
from kit.threads.ids import new_thread_id
from kit.threads.store import ThreadStore, open_store
from tests.helpers import bubbles, wait_until
from tests.postgres import postgres_cluster  # noqa: F401  (a fixture)


def email_call(text: str) -> tuple[str, dict[str, Any]]:
    """The scripted model's tool call: an email to whoever the user names."""
    return "send_email", {"to": text, "subject": "Lunch", "body": "Noon?"}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadStore]:
    where = tmp_path / "t.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_cluster").url
    opened = open_store(where)
    yield opened
    opened.close()


@pytest.fixture
def sent() -> Iterator[list[dict[str, str]]]:
    demo.SENT_EMAILS.clear()
    yield demo.SENT_EMAILS
    demo.SENT_EMAILS.clear()


def agent_app(store: ThreadStore) -> Flask:
    return demo.demo_agent_app(store, ScriptedToolModel(tool_call_for=email_call), approvals=True)


class Chat:
    """One thread of an app, over Flask's test client."""

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()
        self.headers = {"X-Kit-Thread-Id": new_thread_id()}

    def say(self, text: str) -> str:
        body = {"messages": [{"role": "user", "text": text}]}
        return self.client.post("/chat-stream", json=body, headers=self.headers).get_data(as_text=True)

    def pending(self) -> list[dict[str, Any]]:
        return self.client.get(f"/threads/{self.headers['X-Kit-Thread-Id']}/interrupts").json

    def resume(self, body: dict[str, Any]) -> Any:
        return self.client.post("/chat-stream/resume", json=body, headers=self.headers)


def texts(sse: str) -> str:
    data = [value for name, value in map(parse_line, sse_lines([sse])) if name == "data"]
    return "".join(json.loads(value).get("text", "") for value in data)


def test_approve_runs_the_tool_once_and_streams_the_continuation(store: ThreadStore, sent: list[Any]) -> None:
    chat = Chat(agent_app(store))
    assert texts(chat.say("bob")).endswith("Waiting for your decision.")
    assert sent == []  # stopped before the tool
    (item,) = chat.pending()
    assert item["kind"] == "tool_calls"
    (action,) = item["actions"]
    assert action["name"] == "send_email" and action["args"] == {"to": "bob", "subject": "Lunch", "body": "Noon?"}
    assert action["allowed_decisions"] == ["approve", "edit", "reject"]
    assert action["args_schema"]["required"] == ["to", "subject", "body"]
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]})
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    assert texts(reply.get_data(as_text=True)).endswith("Done: Email to bob sent: Lunch")
    assert sent == [{"to": "bob", "subject": "Lunch", "body": "Noon?"}]
    assert chat.pending() == []
    again = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]})
    assert again.status_code == 409 and "already made" in again.json["error"]
    assert len(sent) == 1


def test_edit_runs_the_edited_call_and_reject_runs_nothing(store: ThreadStore, sent: list[Any]) -> None:
    chat = Chat(agent_app(store))
    chat.say("bob")
    (item,) = chat.pending()
    args = {"to": "carol", "subject": "Tea", "body": "4?"}
    edited = {"type": "edit", "edited_action": {"name": "send_email", "args": args}}
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [edited]})
    assert texts(reply.get_data(as_text=True)).endswith("Done: Email to carol sent: Tea")
    assert sent == [{"to": "carol", "subject": "Tea", "body": "4?"}]

    chat.say("dave")
    (item,) = chat.pending()
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "reject", "message": "not dave"}]})
    assert "User rejected the tool call for `send_email` with reason: not dave" in reply.get_data(as_text=True)
    assert sent == [{"to": "carol", "subject": "Tea", "body": "4?"}]  # nothing more ran
    assert chat.pending() == []


def one_node_graph(store: ThreadStore, ask: Callable[[MessagesState], dict[str, list[AIMessage]]]) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    return graph.compile(checkpointer=store.checkpointer())


def question_graph(store: ThreadStore) -> Any:
    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        answer = interrupt({"question": "Which city?"})
        return {"messages": [AIMessage(f"Booked {answer}.")]}

    return one_node_graph(store, ask)


def test_a_plain_interrupt_is_a_question_answered_with_text(store: ThreadStore) -> None:
    chat = Chat(create_app(graph_source(question_graph(store)), thread_store=store))
    assert texts(chat.say("book me a trip")) == "Waiting for your decision."
    (item,) = chat.pending()
    assert item["kind"] == "question" and item["value"] == {"question": "Which city?"}
    assert chat.resume({"interrupt_id": item["id"], "decisions": []}).status_code == 400  # a question wants "answer"
    reply = chat.resume({"interrupt_id": item["id"], "answer": "Lyon"})
    assert texts(reply.get_data(as_text=True)) == "Booked Lyon."
    assert chat.pending() == []


TRIP_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "title": "City"},
        "nights": {"type": "integer"},
        "window": {"type": "boolean"},
        "cabin": {"enum": ["economy", "business"]},
    },
    "required": ["city", "nights"],
}


def form_graph(store: ThreadStore, received: list[Any]) -> Any:
    """A question with a JSON schema (the page shows it as a form); the node records the value it gets."""

    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        answer = interrupt({"question": "Your trip?", "schema": TRIP_SCHEMA})
        received.append(answer)
        return {"messages": [AIMessage(f"Booked {answer['city']} for {answer['nights']} nights.")]}

    return one_node_graph(store, ask)


def test_a_question_with_a_schema_takes_only_a_value_that_fits_it(store: ThreadStore) -> None:
    received: list[Any] = []
    chat = Chat(create_app(graph_source(form_graph(store, received)), thread_store=store))
    chat.say("book me a trip")
    (item,) = chat.pending()
    assert item["kind"] == "question" and item["value"]["schema"] == TRIP_SCHEMA
    assert item["fields"] == ["city", "nights", "window", "cabin"]  # the schema's order, for the form
    for answer, field in [
        ({"city": "Lyon", "nights": "two"}, "nights: 'two' is not of type 'integer'"),
        ({"city": "Lyon"}, "'nights' is a required property"),
        ({"city": "Lyon", "nights": 2, "cabin": "first"}, "cabin: 'first' is not one of"),
        ("Lyon", "is not of type 'object'"),
    ]:
        refused = chat.resume({"interrupt_id": item["id"], "answer": answer})
        assert refused.status_code == 400 and field in refused.json["error"], refused.json
        assert chat.pending() == [item] and received == []  # nothing claimed, nothing ran
    good = {"city": "Lyon", "nights": 2, "window": True, "cabin": "business"}
    reply = chat.resume({"interrupt_id": item["id"], "answer": good})
    assert texts(reply.get_data(as_text=True)) == "Booked Lyon for 2 nights."
    assert received == [good] and chat.pending() == []


@pytest.mark.parametrize(
    ("decision", "status", "error"),
    [
        ({"type": "respond", "message": "x"}, 400, "send_email allows approve, edit, reject, not 'respond'"),
        ({"type": "edit", "edited_action": {"args": {"to": 3}}}, 400, "the edited arguments do not fit send_email"),
        ({"type": "edit"}, 400, "an edit decision carries the edited arguments"),
        ("approve", 400, "not None"),
    ],
)
def test_a_bad_decision_is_refused_and_the_thread_stays_resumable(
    store: ThreadStore, sent: list[Any], decision: Any, status: int, error: str
) -> None:
    chat = Chat(agent_app(store))
    chat.say("bob")
    (item,) = chat.pending()
    refused = chat.resume({"interrupt_id": item["id"], "decisions": [decision]})
    assert refused.status_code == status and error in refused.json["error"]
    assert chat.pending() == [item] and sent == []
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]})
    assert reply.status_code == 200 and texts(reply.get_data(as_text=True)).endswith("Done: Email to bob sent: Lunch")
    assert len(sent) == 1


def test_unknown_ids_and_malformed_requests_are_4xx_json(store: ThreadStore, sent: list[Any]) -> None:
    chat = Chat(agent_app(store))
    chat.say("bob")
    (item,) = chat.pending()
    unknown = chat.resume({"interrupt_id": "0" * 32, "decisions": [{"type": "approve"}]})
    assert unknown.status_code == 404 and "not waiting for this interrupt" in unknown.json["error"]
    assert chat.resume({"decisions": []}).status_code == 400
    assert chat.resume({"interrupt_id": item["id"], "decisions": []}).status_code == 400  # one per tool call
    no_thread = chat.client.post("/chat-stream/resume", json={"interrupt_id": item["id"]})
    assert no_thread.status_code == 400 and "X-Kit-Thread-Id" in no_thread.json["error"]
    other = Chat(chat.client.application)  # another thread: not waiting for this one's interrupt
    assert other.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]}).status_code == 404
    assert chat.pending() == [item] and sent == []


def test_two_resumes_at_once_run_the_tool_once(store: ThreadStore, sent: list[Any], serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(agent_app(store))
    chat = Chat(agent_app(store))  # the same database: the decision may reach another app (worker) than the chat
    chat.say("bob")
    (item,) = chat.pending()
    statuses: list[int] = []
    start = threading.Barrier(4)

    def decide() -> None:
        start.wait()
        body = {"interrupt_id": item["id"], "decisions": [{"type": "approve"}]}
        reply = httpx.post(server.url + "chat-stream/resume", json=body, headers=chat.headers, timeout=30)
        statuses.append(reply.status_code)

    workers = [threading.Thread(target=decide) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(statuses) == [200, 409, 409, 409]
    assert sent == [{"to": "bob", "subject": "Lunch", "body": "Noon?"}]


def test_a_source_without_a_checkpointer_has_no_interrupts(tmp_path: Path) -> None:
    chat = Chat(create_app(lambda messages: ["Hi"], thread_store=tmp_path / "t.sqlite"))
    assert chat.pending() == []
    refused = chat.resume({"interrupt_id": "0" * 32, "answer": "x"})
    assert refused.status_code == 404 and "no interrupts" in refused.json["error"]


def test_stop_during_a_resumed_continuation_cancels_the_graph(tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path / "t.sqlite")
    resumed, seen = threading.Event(), []

    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        interrupt({"question": "Go?"})
        resumed.set()
        token = current_cancel()  # the resume route's token, carried into the node by the kit
        seen.append(token is not None and token.wait(20))  # True: Stop reached the node
        return {"messages": [AIMessage("Too late.")]}

    server = serve(create_app(graph_source(one_node_graph(store, ask)), thread_store=store, heartbeat_s=1.0))
    headers = {"X-Kit-Thread-Id": new_thread_id()}
    httpx.post(server.url + "chat-stream", json={"messages": [{"role": "user", "text": "go"}]}, headers=headers)
    (item,) = httpx.get(server.url + f"threads/{headers['X-Kit-Thread-Id']}/interrupts").json()
    replies: list[httpx.Response] = []
    stream_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    resume = threading.Thread(
        target=lambda: replies.append(
            httpx.post(
                server.url + "chat-stream/resume",
                json={"interrupt_id": item["id"], "answer": "yes"},
                headers={**headers, "X-Kit-Stream-Id": stream_id},
                timeout=30,
            )
        )
    )
    resume.start()
    assert resumed.wait(10), "the continuation did not start"
    stop = server.url + "chat-stream/stop"
    assert wait_until(lambda: httpx.post(stop, content=stream_id).json() == {"stopped": True}, timeout=5)
    resume.join(timeout=10)
    assert wait_until(lambda: seen == [True], timeout=5), seen  # the node woke on the cancel, not the 20 s timeout
    (reply,) = replies
    assert reply.status_code == 200 and "Too late." not in texts(reply.text)


def per_call_agent(store: ThreadStore, allowed: list[Any]) -> Flask:
    """The demo's send_email behind the middleware's `per_call` mode: an interrupt per tool call, answered by one
    decision, with the decisions it allows in the interrupt's response schema."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    asked = {"send_email": {"allowed_decisions": allowed}}
    gate = HumanInTheLoopMiddleware(interrupt_on=asked, interrupt_mode="per_call")
    model = ScriptedToolModel(tool_call_for=email_call)
    agent = create_agent(model, tools=[demo.send_email], middleware=[gate], checkpointer=store.checkpointer())
    return create_app(graph_source(agent, steps_role="steps"), thread_store=store)


def test_per_call_approvals_are_cards_too_and_respond_answers_for_the_tool(store: ThreadStore, sent: list[Any]) -> None:
    chat = Chat(per_call_agent(store, ["approve", "respond"]))
    assert texts(chat.say("bob")).endswith("Waiting for your decision.")
    (item,) = chat.pending()
    assert item["kind"] == "tool_calls" and item["per_call"] is True
    (action,) = item["actions"]
    assert action["name"] == "send_email" and action["args"]["to"] == "bob"
    assert action["allowed_decisions"] == ["approve", "respond"]  # read from the interrupt's response schema
    refused = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "reject"}]})
    assert refused.status_code == 400 and "allows approve, respond, not 'reject'" in refused.json["error"]
    empty = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "respond", "message": ""}]})
    assert empty.status_code == 400 and chat.pending() == [item]
    answered = {"type": "respond", "message": "Bob is on holiday, mail him next week."}
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [answered]})
    assert texts(reply.get_data(as_text=True)).endswith("Done: Bob is on holiday, mail him next week.")
    assert sent == [] and chat.pending() == []  # the person answered for the tool: it never ran

    chat.say("carol")
    (item,) = chat.pending()
    reply = chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]})
    assert texts(reply.get_data(as_text=True)).endswith("Done: Email to carol sent: Lunch")
    assert sent == [{"to": "carol", "subject": "Lunch", "body": "Noon?"}]


def test_a_response_schema_makes_the_question_a_typed_one(store: ThreadStore) -> None:
    """LangGraph's own `interrupt(value, response_schema=...)`: the schema comes with the question, a typed
    answer from the input box is read as its type, and one that does not fit is a 400 before LangGraph sees it."""
    received: list[Any] = []

    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        nights = interrupt("How many nights?", response_schema={"type": "integer", "minimum": 1})
        received.append(nights)
        return {"messages": [AIMessage(f"{nights} nights booked.")]}

    chat = Chat(create_app(graph_source(one_node_graph(store, ask)), thread_store=store))
    chat.say("book")
    (item,) = chat.pending()
    assert item["value"] == "How many nights?" and item["schema"]["type"] == "integer"
    for answer in ("two", "0", 2.5):
        refused = chat.resume({"interrupt_id": item["id"], "answer": answer})
        assert refused.status_code == 400 and "answer:" in refused.json["error"], refused.json
    assert chat.pending() == [item] and received == []
    reply = chat.resume({"interrupt_id": item["id"], "answer": " 3 "})
    assert texts(reply.get_data(as_text=True)) == "3 nights booked." and received == [3]


def test_a_reload_while_waiting_shows_the_waiting_bubble(store: ThreadStore, sent: list[Any]) -> None:
    chat = Chat(agent_app(store))
    chat.say("bob")
    thread = chat.headers["X-Kit-Thread-Id"]
    shown = chat.client.get(f"/threads/{thread}/messages").json
    assert bubbles(shown)[0] == {"role": "user", "text": "bob"}
    assert shown[-1]["text"] == "Waiting for your decision."
    (item,) = chat.pending()
    chat.resume({"interrupt_id": item["id"], "decisions": [{"type": "approve"}]}).get_data()
    after = chat.client.get(f"/threads/{thread}/messages").json
    assert all(bubble["text"] != "Waiting for your decision." for bubble in after)
    assert after[-1]["text"].endswith("Done: Email to bob sent: Lunch")
