"""The compatibility table's chain rows: the chains, graphs and agents users already have, on the real model.

Each row is served by `create_app` exactly as a user would pass it (no wrapper unless the row is about one),
streamed through a real server and read by a real SSE client (tests/compat.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import StreamingStdOutCallbackHandler
from langchain_core.prompts import PromptTemplate
from langchain_core.tools import tool

from kit.adapters.callbacks import callback_source
from kit.adapters.graphs import graph_source
from kit.adapters.inputs import history_input
from kit.adapters.ready_made import demo_chain, openai_chat_model
from kit.model.chat_model import ChatLlama
from tests.compat import CompatCase, check_case, llama_server_url, one_node_graph, stop_llama_server

WEATHER_QUESTION = "What is the weather in Paris?"
QUESTION = "Tell me about Paris in two sentences."


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 degrees in {city}."


def kit_model(max_tokens: int = 48) -> ChatLlama:
    return ChatLlama(max_tokens=max_tokens, temperature=0, seed=1, prefix_reuse=False)  # reproducible replies


def idle() -> bool:
    """Stop reached the model: the engine runs no generation."""
    return not kit_model().engine.busy


def weather_agent(model: Any = None) -> Any:
    return create_agent(model if model is not None else kit_model(), tools=[get_weather])


def legacy_llm_chain() -> Any:
    """The seed's scenario: an LLMChain over a llama.cpp model whose handler prints tokens to stdout."""
    from langchain_classic.chains import LLMChain

    model = ChatLlama(max_tokens=48, temperature=0, seed=1, callbacks=[StreamingStdOutCallbackHandler()])
    with warnings.catch_warnings():  # LLMChain is deprecated, and still what many users run
        warnings.simplefilter("ignore")
        return LLMChain(llm=model, prompt=PromptTemplate.from_template("Answer in one sentence: {question}"))


def conversation_chain() -> Any:
    from langchain_classic.chains import ConversationChain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConversationChain(llm=kit_model())


def callback_function() -> Any:
    """Code written for callbacks: a function that passes its `callbacks` to the chain it runs."""
    chain = demo_chain(kit_model())

    def answer(inputs: dict[str, Any], callbacks: list[Any]) -> str:
        return chain.invoke(inputs, config={"callbacks": callbacks})

    return callback_source(answer, to_input=history_input(), models=[kit_model()])


@pytest.fixture(scope="module", autouse=True)
def stop_openai_server() -> Iterator[None]:
    yield
    stop_llama_server()


def remote_model() -> Any:
    return openai_chat_model(llama_server_url(), max_tokens=48, temperature=0, seed=1)


CASES = [
    CompatCase("LCEL chain (prompt | ChatLlama | parser)", lambda: demo_chain(kit_model()), QUESTION, stopped=idle),
    CompatCase("LangGraph StateGraph over MessagesState", lambda: one_node_graph(kit_model()), QUESTION, stopped=idle),
    CompatCase("agent with a tool (langchain create_agent)", weather_agent, WEATHER_QUESTION, stopped=idle),
    CompatCase(
        "agent with a tool, steps in their own bubble",
        lambda: graph_source(weather_agent(), steps_role="steps"),
        WEATHER_QUESTION,
        stopped=idle,
    ),
    CompatCase("legacy LLMChain + StreamingStdOutCallbackHandler", legacy_llm_chain, QUESTION, stopped=idle),
    CompatCase("legacy ConversationChain", conversation_chain, QUESTION, stopped=idle),
    CompatCase("callback-style function (callback_source)", callback_function, QUESTION, stopped=idle),
    CompatCase("LangGraph graph on the OpenAI-compatible server", lambda: one_node_graph(remote_model()), QUESTION),
    CompatCase("agent with a tool on the OpenAI-compatible server", lambda: weather_agent(remote_model())),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_source_streams_as_a_user_passes_it(case: CompatCase) -> None:
    check_case(case)
