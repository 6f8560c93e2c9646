"""Approval cards in Debian's chromium, on the kit's own page and the real Deep Chat bundle: approve, edit,
reject, a free-text answer, a form for a question with a JSON schema, a double click that resumes once, a reload
with a pending card, two tabs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import MessagesState
from langgraph.types import interrupt

from kit import create_app
from kit.adapters.graphs import graph_source
from kit.serving import demo
from kit.testing.browser import chromium_page
from kit.testing.tool_model import ScriptedToolModel
from kit.threads.store import open_store
from tests.helpers import wait_until
from tests.test_browser import send
from tests.test_interrupts import email_call, form_graph, one_node_graph, per_call_agent, question_graph

EMAIL = {"to": "bob", "subject": "Lunch", "body": "Noon?"}


@pytest.fixture
def sent() -> Iterator[list[dict[str, str]]]:
    demo.SENT_EMAILS.clear()
    yield demo.SENT_EMAILS
    demo.SENT_EMAILS.clear()


@pytest.fixture
def agent_url(serve, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path / "t.sqlite")
    return serve(demo.demo_agent_app(store, ScriptedToolModel(tool_call_for=email_call), approvals=True)).url


def ai_texts(page: Any) -> list[str]:
    return page.locator(".ai-message-text").all_inner_texts()[1:]  # the intro left out


def cards(page: Any) -> list[str]:
    return page.locator("#kit-interrupts .kit-card").all_inner_texts()


def open_chat(page: Any, url: str) -> None:
    page.goto(url)
    assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") is not None)


def ask_for_email(page: Any, url: str) -> None:
    open_chat(page, url)
    send(page, "bob")
    assert wait_until(lambda: len(cards(page)) == 1, timeout=15), ai_texts(page)


def placeholder(page: Any) -> str:
    return page.evaluate(
        "document.getElementById('chat').shadowRoot.getElementById('text-input')"
        ".getAttribute('deep-chat-placeholder-text')"
    )


def test_a_card_shows_the_call_and_approve_runs_it_once_even_on_a_double_click(agent_url: str, sent: list[Any]) -> None:
    with chromium_page() as page:
        ask_for_email(page, agent_url)
        (card,) = cards(page)
        assert "send_email" in card and '"to": "bob"' in card and "The assistant wants to send this email." in card
        assert "Waiting for your decision" in placeholder(page)
        page.locator(".kit-approve").dblclick()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Done: Email to bob sent: Lunch"], timeout=15), ai_texts(page)
        assert sent == [EMAIL] and cards(page) == []
        assert page.locator(".user-message-text").all_inner_texts()[-1] == "Approved"
        assert placeholder(page) == "Type a message"


def test_edit_in_place_and_reject_with_a_reason(agent_url: str, sent: list[Any]) -> None:
    with chromium_page() as page:
        ask_for_email(page, agent_url)
        page.locator(".kit-edit").click()
        page.locator("textarea.kit-card-args").fill("{not json")
        page.locator(".kit-save").click()
        assert "Not JSON" in page.locator(".kit-card-error").inner_text() and sent == []
        page.locator("textarea.kit-card-args").fill('{"to": "carol", "subject": "Tea", "body": "4?"}')
        page.locator(".kit-save").click()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Done: Email to carol sent: Tea"], timeout=15), ai_texts(page)
        assert sent == [{"to": "carol", "subject": "Tea", "body": "4?"}]

        send(page, "dave")
        assert wait_until(lambda: len(cards(page)) == 1, timeout=15)
        page.locator(".kit-reject").click()
        page.locator(".kit-reason").fill("not dave")
        page.locator(".kit-confirm-reject").click()
        done = "Done: User rejected the tool call for send_email with reason: not dave"  # `send_email` as code
        assert wait_until(lambda: ai_texts(page)[-1:] == [done], timeout=15), ai_texts(page)
        assert len(sent) == 1 and cards(page) == []


def test_a_question_is_answered_in_the_input_box(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path / "t.sqlite")
    server = serve(create_app(graph_source(question_graph(store)), thread_store=store))
    with chromium_page() as page:
        open_chat(page, server.url)
        send(page, "book me a trip")
        assert wait_until(lambda: cards(page) != [], timeout=15)
        assert "Which city?" in cards(page)[0] and "answer" in placeholder(page)
        send(page, "Lyon")
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Booked Lyon."], timeout=15), ai_texts(page)
        assert cards(page) == []


def test_a_question_with_a_schema_is_a_form_whose_value_resumes_the_run(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path / "t.sqlite")
    received: list[Any] = []
    server = serve(create_app(graph_source(form_graph(store, received)), thread_store=store))
    with chromium_page() as page:
        open_chat(page, server.url)
        send(page, "book me a trip")
        assert wait_until(lambda: cards(page) != [], timeout=15)
        labels = page.locator(".kit-field-label").all_inner_texts()
        assert [label.split("\n")[0].strip() for label in labels] == ["City", "nights", "window", "cabin"]
        assert "form above" in placeholder(page)
        page.locator("input[name=nights]").fill("2")  # the city left empty: the server refuses the form
        page.locator(".kit-submit").click()
        assert wait_until(lambda: "'city' is a required property" in " ".join(ai_texts(page)), timeout=15)
        assert wait_until(lambda: cards(page) != [], timeout=10) and received == []  # refused, still pending
        page.locator("input[name=city]").fill("Lyon")  # the card came back as a fresh form
        page.locator("input[name=nights]").fill("2")
        page.locator("input[name=window]").check()
        page.locator("select[name=cabin]").select_option(label="business")
        page.locator(".kit-submit").click()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Booked Lyon for 2 nights."], timeout=15), ai_texts(page)
        assert received == [{"city": "Lyon", "nights": 2, "window": True, "cabin": "business"}] and cards(page) == []


def test_a_pending_card_comes_back_after_a_reload_and_in_a_second_tab_that_cannot_resume_twice(
    agent_url: str, sent: list[Any]
) -> None:
    with chromium_page() as first:
        ask_for_email(first, agent_url)
        first.reload()
        assert wait_until(lambda: len(cards(first)) == 1, timeout=10)
        assert wait_until(lambda: ai_texts(first)[-1:] == ["Waiting for your decision."])  # the bubble too
        second = first.context.new_page()
        open_chat(second, agent_url)
        assert wait_until(lambda: cards(second) == cards(first), timeout=10)
        first.locator(".kit-approve").click()
        assert wait_until(lambda: ai_texts(first)[-1:] == ["Done: Email to bob sent: Lunch"], timeout=15)
        second.locator(".kit-approve").click()  # a stale card: the server says it was decided already
        assert wait_until(lambda: "already made" in " ".join(ai_texts(second)), timeout=15), ai_texts(second)
        assert wait_until(lambda: cards(second) == [])
        assert sent == [EMAIL]


def test_a_per_call_card_can_be_answered_in_the_tools_place(serve, tmp_path: Path, sent: list[Any]) -> None:  # type: ignore[no-untyped-def]
    server = serve(per_call_agent(open_store(tmp_path / "t.sqlite"), ["approve", "reject", "respond"]))
    with chromium_page() as page:
        ask_for_email(page, server.url)
        assert page.locator(".kit-card-buttons button").all_inner_texts() == ["Approve", "Reject", "Answer instead"]
        page.locator(".kit-respond").click()
        page.locator(".kit-send-answer").click()  # empty: the card says so and sends nothing
        assert "Write the answer first" in page.locator(".kit-card-error").inner_text()
        page.locator(".kit-tool-answer").fill("Bob is away")
        page.locator(".kit-send-answer").click()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Done: Bob is away"], timeout=15), ai_texts(page)
        assert sent == [] and cards(page) == []  # the tool never ran
        assert page.locator(".user-message-text").all_inner_texts()[-1] == "Answered for the tool: Bob is away"


def test_a_typed_question_is_a_one_field_form(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def ask(state: MessagesState) -> dict[str, list[AIMessage]]:
        nights = interrupt("How many nights?", response_schema={"type": "integer", "minimum": 1})
        return {"messages": [AIMessage(f"{nights + 1} days.")]}  # arithmetic: the answer came as a number

    store = open_store(tmp_path / "t.sqlite")
    server = serve(create_app(graph_source(one_node_graph(store, ask)), thread_store=store))
    with chromium_page() as page:
        open_chat(page, server.url)
        send(page, "book")
        assert wait_until(lambda: cards(page) != [], timeout=15)
        assert page.locator("input[name=answer]").get_attribute("type") == "number"
        page.locator("input[name=answer]").fill("3")
        page.locator(".kit-submit").click()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["4 days."], timeout=15), ai_texts(page)
        assert page.locator(".user-message-text").all_inner_texts()[-1] == "3"


def test_a_message_cannot_pass_a_call_that_allows_no_reject(serve, tmp_path: Path, sent: list[Any]) -> None:  # type: ignore[no-untyped-def]
    """A typed message rejects a pending call where it may; where the call allows no reject, sending it would
    start a new run past the interrupt (a tool call left unanswered): the page says to decide first."""
    server = serve(per_call_agent(open_store(tmp_path / "t.sqlite"), ["approve", "edit"]))
    with chromium_page() as page:
        ask_for_email(page, server.url)
        assert placeholder(page) == "Waiting for your decision on the card above"
        send(page, "carol")
        assert wait_until(lambda: "Decide on the card above first" in " ".join(ai_texts(page)), timeout=10)
        assert len(cards(page)) == 1 and sent == []
        page.locator(".kit-approve").click()
        assert wait_until(lambda: ai_texts(page)[-1:] == ["Done: Email to bob sent: Lunch"], timeout=15), ai_texts(page)
        assert sent == [EMAIL]
