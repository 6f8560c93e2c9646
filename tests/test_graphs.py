"""LangGraph graphs and agents, and the embedded model's tool calls: real graphs, the real model, real servers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, TypedDict

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph

from kit import create_app
from kit.adapters.graphs import StepSelector, answer_from_state, graph_source
from kit.model.chat_model import ChatLlama
from kit.model.tools import call_grammar, split_call_or_text, tool_mode
from kit.serving.client import chat_body, stream_chat
from tests.helpers import wait_until
from tests.test_compat_chains import WEATHER_QUESTION, get_weather, weather_agent


def kit_model(max_tokens: int = 48) -> ChatLlama:
    return ChatLlama(max_tokens=max_tokens, temperature=0, seed=1, prefix_reuse=False)  # reproducible replies


# -- the embedded model's tool calls -------------------------------------------------------------------


def test_a_bound_tool_is_called_with_arguments_that_match_its_schema() -> None:
    model = kit_model().bind_tools([get_weather])
    reply = model.invoke(WEATHER_QUESTION)
    assert reply.content == "" and len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str) and call["args"]["city"]


def test_after_the_tool_result_the_model_answers_in_text_from_it() -> None:
    agent = weather_agent()
    state = agent.invoke({"messages": [("user", WEATHER_QUESTION)]})
    kinds = [type(message).__name__ for message in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert "22" in state["messages"][-1].content and "{" not in state["messages"][-1].content


def test_tool_choice_none_answers_in_text_and_a_named_choice_calls_that_tool() -> None:
    @tool
    def get_time(city: str) -> str:
        """Get the local time in a city."""
        return "noon"

    assert kit_model().bind_tools([get_weather, get_time], tool_choice="none").invoke(WEATHER_QUESTION).content
    named = kit_model().bind_tools([get_weather, get_time], tool_choice="get_time").invoke(WEATHER_QUESTION)
    assert [call["name"] for call in named.tool_calls] == ["get_time"]


def test_the_policy_decides_when_a_call_is_forced() -> None:
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    asked = [AIMessage("x")][:0]
    after_results = [ToolMessage("noon", name="now", tool_call_id="1")]
    assert tool_mode(tools, None, "call_then_answer", asked).grammar == call_grammar(tools, allow_text=False)
    assert tool_mode(tools, None, "call_then_answer", after_results).grammar is None
    assert tool_mode(tools, None, "model_decides", asked).grammar == call_grammar(tools, allow_text=True)
    assert tool_mode(tools, "any", "call_then_answer", after_results).grammar == call_grammar(tools, allow_text=False)
    assert tool_mode(None, "any", "call_then_answer", asked).grammar is None


def test_a_text_answer_streams_as_it_comes_and_a_call_is_gathered_whole() -> None:
    assert list(split_call_or_text([" Hel", "lo", "!"], may_call=True)) == [
        ("text", " Hel"),
        ("text", "lo"),
        ("text", "!"),
    ]
    assert list(split_call_or_text([' {"na', 'me": "x"', "}"], may_call=True)) == [("call", '{"name": "x"}')]
    assert list(split_call_or_text(["{", "}"], may_call=False)) == [("text", "{"), ("text", "}")]


# -- choosing what reaches which bubble ----------------------------------------------------------------


def test_tool_calls_and_results_go_to_the_steps_bubble_and_ai_text_to_the_answer() -> None:
    selector = StepSelector("steps", None)
    call = AIMessageChunk(
        content="", tool_call_chunks=[{"name": "get_weather", "args": '{"city": "Paris"}', "index": 0}]
    )
    pieces = [
        *selector.feed(call, {"langgraph_node": "model"}),
        *selector.feed(ToolMessage("sunny", name="get_weather", tool_call_id="1"), {"langgraph_node": "tools"}),
        *selector.feed(AIMessageChunk(content="It is sunny."), {"langgraph_node": "model"}),
    ]
    assert pieces == [
        ("steps", "calling get_weather "),
        ("steps", '{"city": "Paris"}'),
        ("steps", "\nget_weather returned: sunny\n"),
        ("ai", "It is sunny."),
    ]
    assert list(StepSelector(None, None).feed(call, {})) == []  # without a steps role, only the answer


def test_answer_nodes_send_other_nodes_text_to_the_steps() -> None:
    selector = StepSelector("steps", ["answer"])
    assert list(selector.feed(AIMessageChunk(content="draft"), {"langgraph_node": "draft"})) == [("steps", "draft")]
    assert list(selector.feed(AIMessageChunk(content="final"), {"langgraph_node": "answer"})) == [("ai", "final")]


# -- graphs served ---------------------------------------------------------------------------------------


class QuestionAnswer(TypedDict, total=False):
    question: str
    answer: str


def test_a_graph_that_writes_no_messages_answers_from_its_final_state(serve) -> None:  # type: ignore[no-untyped-def]
    graph = StateGraph(QuestionAnswer)
    graph.add_node("shout", lambda state: {"answer": state["question"].upper()})
    graph.add_edge(START, "shout")
    graph.add_edge("shout", END)
    reply = stream_chat(serve(create_app(graph.compile())).url + "chat-stream", "hello there")
    assert reply.errors == [] and reply.text == "HELLO THERE"


def test_a_graph_without_an_answer_says_so_instead_of_an_empty_bubble(serve) -> None:  # type: ignore[no-untyped-def]
    graph = StateGraph(QuestionAnswer)
    graph.add_node("nothing", lambda state: {"question": state["question"]})
    graph.add_edge(START, "nothing")
    graph.add_edge("nothing", END)
    reply = stream_chat(serve(create_app(graph.compile())).url + "chat-stream", "hello")
    assert reply.text == "" and len(reply.errors) == 1 and "without an answer" in reply.errors[0]
    with pytest.raises(Exception, match="question"):
        answer_from_state({"question": "hello"})


def test_a_failing_node_gives_one_error_after_the_partial_answer(serve) -> None:  # type: ignore[no-untyped-def]
    model = kit_model()

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    def broken(state: MessagesState) -> dict[str, list[BaseMessage]]:
        raise RuntimeError("the database is down")

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_node("broken", broken)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", "broken")
    graph.add_edge("broken", END)
    reply = stream_chat(serve(create_app(graph.compile())).url + "chat-stream", "Tell me about Paris.", timeout=60)
    assert len(reply.text) > 10 and len(reply.errors) == 1
    assert reply.events[-1].get("error") and all("error" not in event for event in reply.events[:-1])


def test_stop_between_two_steps_keeps_the_next_step_from_running(serve) -> None:  # type: ignore[no-untyped-def]
    ran: list[str] = []
    first_done = threading.Event()

    def first(state: MessagesState) -> dict[str, list[BaseMessage]]:
        ran.append("first")
        return {"messages": [AIMessage("Working on it... " * 50)]}

    def second(state: MessagesState) -> dict[str, list[BaseMessage]]:
        first_done.wait(5)
        time.sleep(0.5)
        ran.append("second")
        return {"messages": [AIMessage("done")]}

    graph = StateGraph(MessagesState)
    graph.add_node("first", first)
    graph.add_node("third", lambda state: ran.append("third") or {"messages": []})
    graph.add_node("second", second)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", "third")
    graph.add_edge("third", END)
    source = graph_source(graph.compile())
    from kit.pipeline.cancel import CancelToken

    cancel = CancelToken()
    stream = source([{"role": "user", "text": "go"}], cancel)
    assert next(iter(stream)).startswith("Working")
    first_done.set()
    cancel.cancel()
    stream.close()
    time.sleep(1.0)
    assert "third" not in ran  # the graph ended with the step that was running


@pytest.mark.timeout(240)
def test_chromium_shows_the_agents_tool_step_and_its_answer_in_two_bubbles(serve) -> None:  # type: ignore[no-untyped-def]
    from kit.testing.browser import chromium_page

    server = serve(create_app(graph_source(weather_agent(), steps_role="steps")))
    with chromium_page() as page:
        page.goto(server.url)
        page.locator("#text-input").click()
        page.keyboard.type(WEATHER_QUESTION)
        page.keyboard.press("Enter")
        answer = page.locator(".deep-chat-outer-container-role-ai .message-bubble")
        steps = page.locator(".deep-chat-outer-container-role-steps .message-bubble")
        assert wait_until(lambda: steps.count() == 1 and "22" in answer.last.inner_text(), timeout=120)
        step_text = steps.first.text_content().strip()  # folded under the answer: its text is in the DOM, hidden
        assert "calling get_weather" in step_text and "Paris" in step_text and "returned: It is sunny" in step_text
        assert json.loads(step_text.split("calling get_weather ", 1)[1].split("\n", 1)[0]) == {"city": "Paris"}
        assert "calling" not in answer.last.inner_text()


# -- token usage -----------------------------------------------------------------------------------------


class _CountingModel(BaseChatModel):
    """Streams `reply` word by word; its last chunk reports the call's usage, as LangChain's chat models do
    (10 input tokens per message it was given, one output token per word)."""

    reply: str = "one two three"

    @property
    def _llm_type(self) -> str:
        return "counting"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages))

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        words = self.reply.split(" ")
        for index, word in enumerate(words):
            yield ChatGenerationChunk(message=AIMessageChunk(word if index == 0 else " " + word))
        inputs, outputs = 10 * len(messages), len(words)
        usage = UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)
        yield ChatGenerationChunk(message=AIMessageChunk("", usage_metadata=usage))


def _two_model_calls() -> Any:
    """A draft node and an answer node, each calling the model: the reply used both calls' tokens."""
    model = _CountingModel()
    graph = StateGraph(MessagesState)
    graph.add_node("draft", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("answer", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "answer")
    graph.add_edge("answer", END)
    return graph_source(graph.compile(), answer_nodes=["answer"])


def test_a_graphs_usage_is_summed_over_its_model_calls_and_reaches_the_page_and_the_inspector(serve) -> None:  # type: ignore[no-untyped-def]
    from kit.notebook.inspector import Inspector, stats_table

    app = create_app(_two_model_calls(), thread_store=False, coalesce_ms=0)
    inspector = Inspector(app)
    reply = stream_chat(serve(app).url + "chat-stream", "hi")
    assert reply.errors == [] and reply.text == "one two three"
    # The draft saw the question (10 in), the answer the question and the draft (20 in); 3 words out each.
    assert reply.events[-1] == {"usage": {"input_tokens": 30, "output_tokens": 6}}
    assert sum("usage" in event for event in reply.events) == 1
    stats = inspector.wait().stats
    assert (stats.input_tokens, stats.output_tokens) == (30, 6)
    assert "<td>30 / 6</td>" in stats_table(inspector.streams)


def test_a_chain_ending_in_an_output_parser_reports_every_model_calls_usage(serve) -> None:  # type: ignore[no-untyped-def]
    from langchain_core.messages import HumanMessage
    from langchain_core.output_parsers import StrOutputParser

    # The most common LCEL chain: its output is plain str, so only the model calls themselves say what they used.
    again = RunnableLambda(lambda text: [HumanMessage(text)])
    chain = _CountingModel() | StrOutputParser() | again | _CountingModel(reply="four five") | StrOutputParser()
    url = serve(create_app(chain, thread_store=False, coalesce_ms=0)).url
    reply = stream_chat(url + "chat-stream", "hi")
    assert reply.errors == [] and reply.text == "four five"
    assert reply.events[-1] == {"usage": {"input_tokens": 20, "output_tokens": 5}}
    assert sum("usage" in event for event in reply.events) == 1
    body = httpx.post(url + "chat", json=chat_body("hi")).json()
    assert body == {"text": "four five", "custom": {"usage": {"input_tokens": 20, "output_tokens": 5}}}


def test_a_graphs_json_reply_carries_its_usage(serve) -> None:  # type: ignore[no-untyped-def]
    body = httpx.post(serve(create_app(_two_model_calls(), thread_store=False)).url + "chat", json=chat_body("hi"))
    assert body.json() == {"text": "one two three", "custom": {"usage": {"input_tokens": 30, "output_tokens": 6}}}


class _ModelCalls(BaseCallbackHandler):
    """The usage each model call of a run reported, as LangChain hands it to callback handlers."""

    def __init__(self) -> None:
        self.usages: list[dict[str, int]] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generation in (g for batch in response.generations for g in batch):
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                self.usages.append(dict(usage))


@pytest.mark.timeout(240)
def test_an_agents_usage_adds_up_its_model_calls_around_the_tool(serve) -> None:  # type: ignore[no-untyped-def]
    from kit.notebook.inspector import Inspector

    calls = _ModelCalls()
    app = create_app(graph_source(weather_agent(), config={"callbacks": [calls]}), thread_store=False)
    inspector = Inspector(app)
    reply = stream_chat(serve(app).url + "chat-stream", WEATHER_QUESTION)
    assert reply.errors == [] and "22" in reply.text
    assert len(calls.usages) == 2  # the call of the tool, then the answer from its result
    assert all(usage["output_tokens"] > 0 and usage["input_tokens"] > 0 for usage in calls.usages)
    expected = {key: sum(usage[key] for usage in calls.usages) for key in ("input_tokens", "output_tokens")}
    assert reply.events[-1] == {"usage": expected}
    stats = inspector.wait().stats
    assert (stats.input_tokens, stats.output_tokens) == (expected["input_tokens"], expected["output_tokens"])
