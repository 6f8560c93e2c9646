"""LangChain chains through the kit: history mapping, final answer only, steps bubble, callback-style chains."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableLambda

from kit import create_app
from kit.adapters import adapt
from kit.adapters.callbacks import callback_source
from kit.adapters.events import AnswerSelector, EventFilter
from kit.adapters.inputs import default_to_input, history_input, to_messages
from kit.adapters.ready_made import demo_chain
from kit.adapters.runnables import runnable_source
from kit.model.chat_model import ChatLlama
from kit.model.engine import Engine
from kit.pipeline.cancel import CancelToken
from kit.pipeline.observe import StreamObserver
from kit.pipeline.sources import Role
from kit.serving.client import Received, chat_body, iter_stream, stream_chat
from kit.web.observers import add_observer
from tests.helpers import wait_until

HISTORY = [
    {"role": "system", "text": "Answer in one sentence."},
    {"role": "user", "text": "Tell me about Paris."},
    {"role": "ai", "text": "Paris is the capital of France."},
    {"role": "user", "text": "How many people live there?"},
]


@pytest.fixture(scope="session")
def model() -> ChatLlama:
    """A small, greedy, seeded model on the shared engine (the model loads once per test session)."""
    chat_model = ChatLlama(max_tokens=24, temperature=0, seed=1, prefix_reuse=False)  # reproducible replies
    chat_model.engine.load()
    return chat_model


@pytest.fixture(scope="session")
def two_step(model: ChatLlama) -> tuple[Runnable[Any, str], Runnable[Any, str], Runnable[Any, str]]:
    """Condense the question with the history (first model call), then answer it (second call)."""
    condense = (
        ChatPromptTemplate.from_messages(
            [
                ("system", "Rewrite the last question so that it stands alone. Reply with the question only."),
                MessagesPlaceholder("chat_history"),
                ("human", "{question}"),
            ]
        )
        | model.with_config(run_name="condense")
        | StrOutputParser()
    )
    answer = (
        ChatPromptTemplate.from_messages([("system", "Answer in one sentence."), ("human", "{standalone}")])
        | model.with_config(run_name="answer", tags=["answer"])
        | StrOutputParser()
    )
    return {"standalone": condense} | answer, condense, answer


def texts_and_roles(items: Iterator[Any]) -> str:
    return "".join(f"[{item.name}]" if isinstance(item, Role) else str(item) for item in items)


# -- history -> chain input (no model) -----------------------------------------------------------------


def test_history_maps_to_langchain_messages_with_the_system_prompt_first() -> None:
    messages = to_messages([*HISTORY, {"role": "steps", "text": "not for the model"}])
    assert [(m.type, m.content) for m in messages] == [
        ("system", "Answer in one sentence."),
        ("human", "Tell me about Paris."),
        ("ai", "Paris is the capital of France."),
        ("human", "How many people live there?"),
    ]


def test_history_input_fills_question_history_and_system_keys() -> None:
    value = history_input("q", "past", "sys")(HISTORY)
    assert value["q"] == "How many people live there?"
    assert value["sys"] == "Answer in one sentence."
    assert [m.type for m in value["past"]] == ["human", "ai"]
    without_system_key = history_input()(HISTORY)
    assert [m.type for m in without_system_key["chat_history"]] == ["system", "human", "ai"]
    everything = history_input(question=None, history="messages")(HISTORY)
    assert [m.type for m in everything["messages"]] == ["system", "human", "ai", "human"]


def test_the_default_input_follows_the_chain_input_schema(model: ChatLlama) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "{system}"), MessagesPlaceholder("history"), ("human", "{input}")]
    )
    value = default_to_input(prompt)(HISTORY)
    assert value["input"] == "How many people live there?" and value["system"] == "Answer in one sentence."
    assert [m.type for m in value["history"]] == ["human", "ai"]
    assert [m.type for m in default_to_input(model)(HISTORY)] == ["system", "human", "ai", "human"]
    odd = ChatPromptTemplate.from_messages([("human", "{topic} and {question}")])
    with pytest.raises(TypeError, match=r"\['topic'\].*to_input="):
        default_to_input(odd)
    with pytest.raises(TypeError, match="topic"):  # when the app is created, not on the first chat
        create_app(odd | model)
    create_app(runnable_source(odd | model, to_input=lambda m: {"topic": "cats", "question": "why?"}))


def test_anything_with_stream_that_is_not_a_runnable_gets_the_messages() -> None:
    class Echo:
        def stream(self, messages: list[Any]) -> Iterator[str]:
            yield from (f"{m.type}:{m.content} " for m in messages)

    assert "".join(adapt(Echo())(HISTORY[1:2], CancelToken())) == "human:Tell me about Paris. "


# -- role markers through the kit's pipeline (no model) -----------------------------------------------------


@pytest.mark.parametrize("granularity", ["chunk", "word", "char"])
def test_role_markers_open_new_deep_chat_bubbles_whatever_the_cut(serve, granularity: str) -> None:
    def source(messages: list[Any]) -> Iterator[Any]:
        yield from ["Let me ", "think.", Role("steps"), "Looking up ", "Paris", Role("ai"), "It is ", "big."]

    server = serve(create_app(source, granularity=granularity))  # coalescing must not merge across a role
    events = stream_events(server.url, [{"role": "user", "text": "Hi"}])
    bubbles: list[tuple[str | None, str]] = []
    for payload in events:
        if "role" in payload or not bubbles:
            bubbles.append((payload.get("role"), ""))
        bubbles[-1] = (bubbles[-1][0], bubbles[-1][1] + payload["text"])
    assert bubbles == [(None, "Let me think."), ("steps", "Looking up Paris"), ("ai", "It is big.")]
    reply = httpx.post(server.url + "chat", json=chat_body("Hi"), timeout=10).json()
    assert reply == {"text": "Let me think.It is big."}  # the non-streamed reply is the answer's text


def stream_events(base_url: str, history: list[dict[str, str]]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=60) as client:
        items = list(iter_stream(base_url + "chat-stream", {"messages": history}, client=client))
    return [item.payload for item in items if isinstance(item, Received) and item.payload]


# -- final answer only ------------------------------------------------------------------------------------


def event(kind: str, run_id: str, text: str, parents: tuple[str, ...] = ("root",), **extra: Any) -> dict[str, Any]:
    return {"event": kind, "run_id": run_id, "parent_ids": list(parents), "data": {"chunk": text}, **extra}


def test_the_answer_selector_tells_the_answer_model_from_earlier_steps_without_a_model() -> None:
    events = [
        event("on_chain_start", "root", "", parents=()),
        event("on_chat_model_stream", "condense", "Where"),
        event("on_chat_model_stream", "condense", "?"),
        event("on_chat_model_end", "condense", ""),
        event("on_chat_model_stream", "answer", "It"),
        event("on_parser_stream", "parser", "It"),
        event("on_chain_stream", "root", "It", parents=()),
        event("on_chat_model_stream", "answer", " is."),
        event("on_chain_stream", "root", " is.", parents=()),
    ]

    def run(**options: Any) -> list[tuple[str, str]]:
        selector = AnswerSelector(filter=EventFilter(**options.pop("rules", {})), **options)
        return [piece for item in events for piece in selector.feed(item)] + list(selector.finish())

    assert run(final_only=True, steps_role=None) == [("ai", "It"), ("ai", " is.")]
    steps = [("steps", "Where"), ("steps", "?")]
    assert run(final_only=True, steps_role="steps") == [*steps, ("ai", "It"), ("ai", " is.")]
    assert run(final_only=False, steps_role=None) == [("ai", "Where"), ("ai", "?"), ("ai", "It"), ("ai", " is.")]


def test_create_app_streams_a_runnable_chain(model: ChatLlama, serve) -> None:
    chain = demo_chain(model)
    expected = chain.invoke(history_input()(HISTORY))
    server = serve(create_app(chain))
    assert httpx_reply(server.url, HISTORY) == expected and len(expected) > 10


def httpx_reply(base_url: str, history: list[dict[str, str]]) -> str:
    return "".join(payload.get("text", "") for payload in stream_events(base_url, history))


def test_a_two_step_chain_streams_only_its_final_answer(two_step, serve) -> None:
    chain, condense, answer = two_step
    standalone = condense.invoke(history_input()(HISTORY))
    final = answer.invoke({"standalone": standalone})
    assert standalone and final and standalone != final

    server = serve(create_app(chain))
    assert httpx_reply(server.url, HISTORY) == final
    by_tag = runnable_source(chain, include_tags=["answer"])
    assert texts_and_roles(by_tag(HISTORY, cancel=CancelToken())) == final
    everything = runnable_source(chain, final_only=False)
    assert texts_and_roles(everything(HISTORY, cancel=CancelToken())) == standalone + final


def test_intermediate_steps_can_stream_into_a_bubble_of_their_own(two_step, serve) -> None:
    chain, condense, answer = two_step
    standalone = condense.invoke(history_input()(HISTORY))
    final = answer.invoke({"standalone": standalone})
    source = runnable_source(chain, steps_role="steps")
    assert texts_and_roles(source(HISTORY, cancel=CancelToken())) == f"[steps]{standalone}[ai]{final}"

    server = serve(create_app(source, coalesce_ms=0))
    events = stream_events(server.url, HISTORY)
    # Deep Chat starts a new bubble when an event names another role; the role rides on a text event.
    assert events[0] == {"role": "steps", "text": events[0]["text"]}
    switch = next(i for i, e in enumerate(events) if e.get("role") == "ai")
    assert all("role" not in e for e in events[1:switch])
    assert "".join(e["text"] for e in events[:switch]) == standalone
    assert "".join(e["text"] for e in events[switch:]) == final
    # The non-streaming route answers with the answer only.
    assert httpx.post(server.url + "chat", json={"messages": HISTORY}, timeout=60).json() == {"text": final}


def test_a_chain_over_a_busy_model_is_refused_with_503_before_the_first_byte(serve) -> None:
    impatient = ChatLlama(max_tokens=8, temperature=0, max_queue=0)
    server = serve(create_app(demo_chain(impatient)))
    # Other requests have every slot of the model (and there is no queue).
    holders = [impatient.engine.admit(CancelToken(), max_queue=0) for _ in range(impatient.engine.slots)]
    try:
        response = httpx.post(server.url + "chat-stream", json=chat_body("Hi"), timeout=30)
    finally:
        for holder in holders:
            holder.release()
    assert response.status_code == 503 and "busy" in response.json()["error"]
    assert stream_chat(server.url + "chat-stream", "Hi").status == 200


@pytest.mark.parametrize("events", [False, True], ids=["chain.stream", "astream_events"])
def test_leaving_a_chain_frees_the_model_at_once(model: ChatLlama, serve, events: bool) -> None:
    long_model = ChatLlama(max_tokens=400, temperature=0)
    engine: Engine = long_model.engine
    chain = demo_chain(long_model)
    server = serve(create_app(runnable_source(chain, steps_role="steps") if events else chain))
    items = iter_stream(server.url + "chat-stream", chat_body("Count from 1 to 1000, separated by commas."))
    for item in items:
        if isinstance(item, Received) and item.payload and item.payload.get("text"):
            break
    items.close()
    assert wait_until(lambda: not engine.busy and engine.in_flight == 0, timeout=5)


# -- callback-style chains ----------------------------------------------------------------------------------


def test_a_callback_style_chain_streams_without_being_rewritten(model: ChatLlama, serve) -> None:
    chain = demo_chain(model)

    def legacy_answer(inputs: dict[str, Any], callbacks: list[Any]) -> str:
        # Written for StreamingStdOutCallbackHandler: the chain reports tokens only through callbacks.
        return chain.invoke(inputs, config={"callbacks": callbacks})

    expected = chain.invoke(history_input()(HISTORY))
    server = serve(create_app(callback_source(legacy_answer, to_input=history_input()), coalesce_ms=0))
    events = stream_events(server.url, HISTORY)
    assert "".join(e["text"] for e in events) == expected
    assert len(events) > 5  # token by token, not one block at the end

    runnable_way = callback_source(chain)
    assert "".join(runnable_way(HISTORY, cancel=CancelToken())) == expected


def test_cancelling_a_callback_style_chain_stops_its_thread_and_frees_the_model(serve) -> None:
    long_model = ChatLlama(max_tokens=400, temperature=0)
    chain = demo_chain(long_model)
    server = serve(create_app(callback_source(chain)))
    items = iter_stream(server.url + "chat-stream", chat_body("Count from 1 to 1000, separated by commas."))
    for item in items:
        if isinstance(item, Received) and item.payload and item.payload.get("text"):
            break
    items.close()

    def chain_threads() -> int:
        return sum(thread.name == "kit-callback-chain" for thread in threading.enumerate())

    assert wait_until(lambda: chain_threads() == 0 and not long_model.engine.busy, timeout=5)


def test_a_chain_that_reports_no_tokens_still_answers(serve) -> None:
    chain = RunnableLambda(lambda messages: f"{len(messages)} messages")
    source = callback_source(chain)
    assert list(source(HISTORY, cancel=CancelToken())) == ["4 messages"]


def test_the_chain_demo_serves_the_embedded_model(serve) -> None:
    from kit.serving.demo import build_demo_app

    server = serve(build_demo_app("chain", delay_ms=0))
    reply = stream_chat(server.url + "chat-stream", "Hello! Who are you?", timeout=60)
    assert reply.status == 200 and not reply.errors and len(reply.text) > 10


def test_deep_chat_shows_steps_and_answer_in_two_bubbles_and_sends_both_back(serve) -> None:
    from kit.testing.browser import chromium_page

    script = [Role("steps"), "Looking ", "it up...", Role("ai"), "Paris ", "is big."]
    bodies: list[Any] = []

    def source(messages: list[dict[str, str]]) -> Iterator[Any]:
        bodies.append([m["role"] for m in messages])
        for piece in script:
            time.sleep(0.05)
            yield piece

    app = create_app(source)
    sent: list[list[str]] = []  # what Deep Chat posted, as an observer of the app sees it
    add_observer(app, lambda messages: sent.append([str(m["role"]) for m in messages]) or StreamObserver())
    server = serve(app)
    with chromium_page() as page:
        page.goto(server.url)
        steps = page.locator(".deep-chat-outer-container-role-steps .message-bubble")
        answers = page.locator(".ai-message-text").filter(has_text="Paris is big.")
        for turn, question in enumerate(("Tell me about Paris", "More?"), start=1):
            page.locator("#text-input").click()
            page.keyboard.type(question)
            page.keyboard.press("Enter")
            # This turn's answer, not the last turn's (the last bubble already reads the same).
            assert wait_until(lambda turn=turn: answers.count() == turn and steps.count() == turn, timeout=30)
        assert steps.first.text_content().strip() == "Looking it up..."  # folded, kept
    # The steps bubble comes back with the history; the source gets the conversation's turns only.
    assert sent == [["user"], ["user", "steps", "ai", "user"]]
    assert bodies == [["user"], ["user", "ai", "user"]]
