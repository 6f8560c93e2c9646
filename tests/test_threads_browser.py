"""Threads in Debian's chromium, on the kit's own page and the real Deep Chat bundle: a three-turn chat with a
checkpointed graph, a reload that restores every bubble in order (steps included), "New chat", two tabs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from kit import create_app
from kit.adapters.graphs import graph_source
from kit.pipeline.sources import Message, Role
from kit.testing.browser import chromium_page
from tests.helpers import wait_until
from tests.test_browser import send

Bubble = tuple[str, str]


def bubbles(page: Any) -> list[Bubble]:
    """(role, text) of every bubble on the page in order, the intro message left out; a folded bubble's text as
    the DOM holds it; the page's buttons under a bubble (branches.js) left out."""
    rows = page.locator("[class*='deep-chat-outer-container-role-']").evaluate_all(
        "els => els.filter(e => !e.classList.contains('deep-chat-intro')).map(e => ["
        "  [...e.classList].find(c => c.startsWith('deep-chat-outer-container-role-')).slice(31),"
        "  e.querySelector('.inner-message-container') || e]).map(([role, b]) => ["
        "  role, (b.innerText.trim() || b.textContent.trim())])"  # a folded bubble (steps) has no innerText
    )
    return [(role, text) for role, text in rows]


def looked_up_graph(saver: Any) -> Any:
    """A checkpointed graph with a tool step (a call and its result, written by a node) and an answer that says
    how many messages the checkpoint holds when it is written."""

    def look_up(state: MessagesState) -> dict[str, list[BaseMessage]]:
        asked = state["messages"][-1].text
        call_id = f"call-{len(state['messages'])}"
        call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": asked}, "id": call_id}])
        return {"messages": [call, ToolMessage(f"found {asked}", name="lookup", tool_call_id=call_id)]}

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        asked = state["messages"][-3].text
        return {"messages": [AIMessage(f"{asked} answered; I hold {len(state['messages'])} messages")]}

    graph = StateGraph(MessagesState)
    graph.add_node("look_up", look_up)
    graph.add_node("answer", answer)
    graph.add_edge(START, "look_up")
    graph.add_edge("look_up", "answer")
    return graph.compile(checkpointer=saver)


def looks(page: Any) -> list[list[str]]:
    """How each bubble looks: its classes, inline style, fold state and the computed look of its text, so a
    restored bubble can be compared with the live one."""
    return page.locator(".message-bubble").evaluate_all(
        "els => els.map(e => [e.className, e.getAttribute('style') || '', e.getAttribute('aria-expanded') || '',"
        "  e.dataset.kitLabel || '', getComputedStyle(e).backgroundColor,"
        "  e.firstElementChild ? getComputedStyle(e.firstElementChild).display : ''])"
    )


def chat_turn(page: Any, text: str, expected_answer: str) -> None:
    send(page, text)
    assert wait_until(lambda: bubbles(page)[-1:] == [("ai", expected_answer)], timeout=20), bubbles(page)


def test_three_turns_a_reload_restores_every_bubble_and_new_chat_starts_empty(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    graph = looked_up_graph(InMemorySaver())
    server = serve(create_app(graph_source(graph, steps_role="steps"), thread_store=tmp_path / "t.sqlite"))
    with chromium_page() as page:
        page.goto(server.url)
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 0)
        thread_id = page.evaluate("window.kitThread.id()")
        assert len(thread_id) == 32
        for turn, question in enumerate(("one", "two", "three")):
            chat_turn(page, question, f"{question} answered; I hold {4 * turn + 3} messages")
        shown = bubbles(page)
        assert [role for role, _ in shown] == ["user", "steps", "ai"] * 3
        assert shown[1] == ("steps", 'calling lookup {"q": "one"}\nlookup returned: found one')
        # The checkpoint holds each message once: the page's history was never fed in again.
        state = graph.get_state({"configurable": {"thread_id": thread_id}}).values["messages"]
        assert [m.text for m in state if isinstance(m, HumanMessage)] == ["one", "two", "three"]
        assert len(state) == 12 and len({m.id for m in state}) == 12

        live = looks(page)
        steps = [look for look in live if "steps-message" in look[0]]
        folded = ["false", "Tool steps", "rgb(243, 241, 247)", "none"]  # folded, labelled, muted, text hidden
        assert len(steps) == 3 and all("kit-folded" in look[0] and look[2:] == folded for look in steps), live

        page.reload()
        assert wait_until(lambda: bubbles(page) == shown, timeout=10), bubbles(page)
        assert page.evaluate("window.kitThread.id()") == thread_id
        # Restored bubbles look exactly as they did live: the steps folded, muted and labelled.
        assert wait_until(lambda: looks(page) == live), (looks(page), live)

        page.locator("#kit-new-chat").click()
        assert wait_until(lambda: bubbles(page) == [])
        fresh = page.evaluate("window.kitThread.id()")
        assert fresh != thread_id and len(fresh) == 32
        chat_turn(page, "four", "four answered; I hold 3 messages")  # a thread of its own
        page.reload()
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 3)
        assert bubbles(page)[0] == ("user", "four")


def thinking_source(messages: list[Message]) -> Iterator[str | Role]:
    """A plain source with a steps bubble; its answer counts the messages the page sent."""
    yield Role("steps")
    yield f"thinking about {messages[-1]['text']}"
    yield Role("ai")
    yield f"{len(messages)} messages seen"


def test_two_tabs_of_one_thread_share_its_transcript(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(thinking_source, thread_store=tmp_path / "t.sqlite"))
    with chromium_page() as first:
        first.goto(server.url)
        assert wait_until(lambda: first.evaluate("window.kitThread && window.kitThread.restored") == 0)
        chat_turn(first, "hello", "1 messages seen")
        second = first.context.new_page()
        second.goto(server.url)
        assert wait_until(lambda: bubbles(second) == bubbles(first), timeout=10), bubbles(second)
        assert second.evaluate("window.kitThread.id()") == first.evaluate("window.kitThread.id()")
        # The second tab goes on from the restored bubbles: the page sends them as history (user, steps, ai, user)
        # and the source gets the conversation's turns (user, ai, user: the steps bubble is not a turn).
        chat_turn(second, "again", "3 messages seen")
        first.reload()
        expected = [
            ("user", "hello"),
            ("steps", "thinking about hello"),
            ("ai", "1 messages seen"),
            ("user", "again"),
            ("steps", "thinking about again"),
            ("ai", "3 messages seen"),
        ]
        assert wait_until(lambda: bubbles(first) == expected, timeout=10), bubbles(first)
