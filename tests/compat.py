"""The compatibility table: a source a user brings, streamed through a real server and read by a real SSE client.

Each row (`CompatCase`) builds one kind of source (an LCEL chain, a LangGraph agent, an SDK stream, ...).
`check_case` serves it with `create_app` on loopback and proves the three things a user needs:

- the streamed text equals the non-streamed answer (`POST /chat` on the same app, or a given text),
- it arrived in more than one event (not held back and sent as one block at the end),
- Stop ends it: closing the connection mid-reply ends the source's producer thread quickly.

A reasoning row (`thinking=` its expected thinking) also proves that the thinking bubble holds the thinking
alone and the answer's bubble the answer alone, each in more than one event, the thinking first, and Stop
lands during the thinking (the harness closes after the first text event, a thinking one).

`python -m tests.compat` prints the table (event count and time to first event per row) for the closing note.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from kit import create_app
from kit.notebook.child_server import ChildServer, start_llama_server
from kit.pipeline.pump import live_producers
from kit.serving.client import Received, Reply, chat_body, iter_stream, stream_chat
from kit.serving.server import BackgroundServer

# Rows live next to the tests that own them; each module has a CASES list.
CASE_MODULES = (
    "tests.test_compat_items",
    "tests.test_compat_chains",
    "tests.test_compat_thinking",
    "tests.test_compat_async",
)


@dataclass(frozen=True)
class CompatCase:
    """One row: how to build the source, what to ask, and what the reply must be."""

    name: str
    source: Callable[[], Any]  # builds a fresh source for create_app (called once per check)
    prompt: str = "Hello"
    expected: str | None = None  # None: the answer of POST /chat on the same app
    granularity: str = "chunk"
    # Off by default so the row shows the source's own granularity: with the kit's 16 ms window, pieces a
    # scripted source yields back to back would merge, and "one event" would say nothing about the source.
    coalesce_ms: float = 0.0
    timeout_s: float = 120.0
    # Proof that Stop reached the source itself (for example a scripted source's `cancelled` count, or the
    # model engine going idle); the harness always checks that the producer thread ends.
    stopped: Callable[[], bool] | None = None
    # A reasoning model's row: the text its thinking bubble(s) must hold (None: a model that does not think).
    thinking: str | None = None
    # Bubbles the reply opens, in order, when the row says (a reasoning agent: thinking, steps, thinking, ai).
    bubbles: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CompatResult:
    name: str
    text: str
    events: int
    first_event_s: float  # from sending the request to the first text event
    first_answer_s: float  # from sending the request to the first event of the answer's bubble
    thinking_events: int  # text events of the thinking bubble(s)
    total_s: float
    stop_s: float  # from closing the connection to the source's producer thread ending


_llama_server: ChildServer | None = None


def one_node_graph(model: Any) -> Any:
    """The graph of LangGraph's quickstart: MessagesState and one chat-model node."""
    from langchain_core.messages import BaseMessage
    from langgraph.graph import END, START, MessagesState, StateGraph

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


def llama_server_url() -> str:
    """llama-cpp-python's OpenAI-compatible server on loopback (the embedded model), started once for the rows
    that need it and stopped by `stop_llama_server` (each test module's fixture)."""
    global _llama_server
    if _llama_server is None:
        _llama_server = start_llama_server()
    return _llama_server.url


def stop_llama_server() -> None:
    global _llama_server
    if _llama_server is not None:
        _llama_server.stop()
        _llama_server = None


def _await(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def _stop_mid_reply(url: str, prompt: str, timeout: float) -> None:
    """Read up to the first text event, then close the connection: what Deep Chat's Stop button does."""
    with httpx.Client(timeout=timeout) as client:
        items = iter_stream(url, chat_body(prompt), client=client, timeout=timeout)
        try:
            for item in items:
                if isinstance(item, Received) and item.payload and item.payload.get("text"):
                    return
        finally:
            items.close()


def check_case(case: CompatCase) -> CompatResult:
    """Serve `case` on loopback and assert the row's three promises; return its figures."""
    app = create_app(case.source(), granularity=case.granularity, coalesce_ms=case.coalesce_ms)
    with BackgroundServer(app) as server:
        expected = case.expected
        if expected is None:
            answer = httpx.post(server.url + "chat", json=chat_body(case.prompt), timeout=case.timeout_s)
            assert answer.status_code == 200, f"{case.name}: POST /chat gave {answer.status_code}: {answer.text}"
            expected = answer.json()["text"]
        assert expected, f"{case.name}: the non-streamed answer is empty"

        reply = stream_chat(server.url + "chat-stream", case.prompt, timeout=case.timeout_s)
        assert reply.status == 200, f"{case.name}: status {reply.status}: {reply.events}"
        assert not reply.errors, f"{case.name}: error events {reply.errors}"
        # POST /chat answers with the answer only; steps streamed into a bubble of their own are not part of it.
        answer_text = reply.text_of("ai")
        assert answer_text == expected, f"{case.name}: streamed {answer_text!r}, expected {expected!r}"
        text_items = [item for item in reply.items if item.payload and item.payload.get("text")]
        assert len(text_items) > 1, f"{case.name}: the reply arrived in one event: {reply.events}"
        if case.thinking is not None:
            _check_thinking(case, reply, text_items)

        before = live_producers()
        _stop_mid_reply(server.url + "chat-stream", case.prompt, case.timeout_s)
        stopped_at = time.monotonic()
        stop_s = _await(lambda: live_producers() <= before, timeout=10.0)
        assert stop_s is not None, f"{case.name}: the source kept running 10 s after the client left"
        if case.stopped is not None:
            assert _await(case.stopped, timeout=10.0) is not None, f"{case.name}: Stop did not reach the source"
            stop_s = time.monotonic() - stopped_at
    return _result(case.name, reply, text_items, stop_s)


def roles_of(items: list[Received]) -> list[str]:
    """The bubble (role) each text event goes to: an event without a role continues the previous one's."""
    roles, current = [], "ai"
    for item in items:
        current = (item.payload or {}).get("role", current)
        roles.append(current)
    return roles


def _check_thinking(case: CompatCase, reply: Reply, text_items: list[Received]) -> None:
    roles = roles_of(text_items)
    assert reply.text_of("thinking") == case.thinking, f"{case.name}: thinking {reply.text_of('thinking')!r}"
    assert roles[0] == "thinking", f"{case.name}: the reply did not start with its thinking: {reply.events}"
    for role in ("thinking", "ai"):
        assert roles.count(role) > 1, f"{case.name}: the {role} bubble arrived in one event: {reply.events}"
    if case.bubbles is not None:
        opened = [role for index, role in enumerate(roles) if index == 0 or roles[index - 1] != role]
        assert tuple(opened) == case.bubbles, f"{case.name}: bubbles {opened}"


def _result(name: str, reply: Reply, text_items: list[Received], stop_s: float) -> CompatResult:
    roles = roles_of(text_items)
    answers = (item.at for item, role in zip(text_items, roles, strict=True) if role == "ai")
    answer_at = next(answers, text_items[0].at)
    return CompatResult(
        name=name,
        text=reply.text,
        events=len(text_items),
        first_event_s=text_items[0].at - reply.started,
        first_answer_s=answer_at - reply.started,
        thinking_events=roles.count("thinking"),
        total_s=reply.items[-1].at - reply.started,
        stop_s=stop_s,
    )


def _cell(text: str) -> str:
    return text.replace("|", r"\|")  # a pipe in a row's name would split its cell


def table(results: list[CompatResult]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| source | events | thinking events | first event ms | first answer ms | whole reply ms | stop ms | chars |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_cell(r.name)} | {r.events} | {r.thinking_events} | {r.first_event_s * 1000:.0f} "
        f"| {r.first_answer_s * 1000:.0f} "
        f"| {r.total_s * 1000:.0f} "
        f"| {r.stop_s * 1000:.0f} | {len(r.text)} |"
        for r in results
    ]
    return "\n".join(lines)


def main() -> None:
    results = []
    for module_name in sys.argv[1:] or CASE_MODULES:
        for case in importlib.import_module(module_name).CASES:
            results.append(check_case(case))
    print(table(results))


if __name__ == "__main__":
    main()
