"""The compatibility table's reasoning rows: every shape a reasoning model's thinking comes in, and the chains,
graphs and agents around such a model, each served by `create_app` and read by a real SSE client.

The thinking must land in the thinking bubble alone and the answer in the answer's bubble alone, each in more
than one event, and Stop must work while the model thinks (tests/compat.py). The SDK rows use the real
`openai`, `anthropic` and `ollama` clients on scripted reasoning peers (tests/sdk_peers.py: the embedded model
does not reason); the LangChain rows use LangChain's own ChatOpenAI on the Responses API and on chat
completions against the same peers; rows marked scripted yield the objects a provider's integration gives.

Stop in the chain, graph and agent rows: the kit stops reading (the harness checks the producer thread ends),
but closing LangChain's `RunnableSequence.stream()` or a graph's stream does not close the model's HTTP stream
inside it (langchain-core 1.8: the peer streams on to its end), so those rows do not claim the peer saw Stop;
the kit's own ChatLlama stops through the cancel token instead (tests/test_compat_chains.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import ollama
import openai
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from kit.adapters.graphs import graph_source
from kit.adapters.runnables import runnable_source
from kit.model.source import to_llama_messages
from kit.pipeline.sources import Message
from kit.pipeline.thinking import THINKING
from kit.testing.fakes import ScriptedSource
from tests.compat import CompatCase, check_case, one_node_graph
from tests.sdk_peers import (
    PEER_ANSWER,
    PEER_THOUGHT,
    PIECE_DELAY_S,
    RESULT_THOUGHT,
    TOOL_THOUGHT,
    WEATHER_ANSWER,
    pieces,
)
from tests.test_compat_items import QUESTION, Peer, stop_servers  # noqa: F401 (the module fixture stops the peers)

WEATHER_QUESTION = "What is the weather in Paris?"
SourceFactory = Callable[[Peer], Any]


def openai_chunks(model: str) -> SourceFactory:
    def make(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
        client = openai.OpenAI(base_url=peer.url + "/v1", api_key="not-needed")

        def source(messages: list[Message]) -> Iterator[Any]:
            with client.chat.completions.create(model=model, messages=to_llama_messages(messages), stream=True) as s:
                yield from s

        return source

    return make


def openai_helper_events(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = openai.OpenAI(base_url=peer.url + "/v1", api_key="not-needed")

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.chat.completions.stream(model="peer-think", messages=to_llama_messages(messages)) as stream:
            yield from stream

    return source


def responses_events(model: str) -> SourceFactory:
    def make(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
        client = openai.OpenAI(base_url=peer.url + "/v1", api_key="not-needed")

        def source(messages: list[Message]) -> Iterator[Any]:
            with client.responses.create(model=model, input=to_llama_messages(messages), stream=True) as stream:
                yield from stream

        return source

    return make


def anthropic_events(helper: bool) -> SourceFactory:
    def make(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
        client = anthropic.Anthropic(base_url=peer.url, api_key="not-needed")
        kwargs = {"model": "peer-think", "max_tokens": 64, "thinking": {"type": "enabled", "budget_tokens": 32}}

        def source(messages: list[Message]) -> Iterator[Any]:
            if helper:
                with client.messages.stream(messages=to_llama_messages(messages), **kwargs) as stream:
                    yield from stream  # raw events, and the helper's "thinking" and "text" copies of them
            else:
                with client.messages.create(messages=to_llama_messages(messages), stream=True, **kwargs) as stream:
                    yield from stream

        return source

    return make


def ollama_chat(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = ollama.Client(host=peer.url)
    return lambda messages: client.chat(
        model="peer-think", messages=to_llama_messages(messages), stream=True, think=True
    )


def ollama_generate(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = ollama.Client(host=peer.url)
    return lambda messages: client.generate(
        model="peer-think", prompt=str(messages[-1]["text"]), stream=True, think=True
    )


def responses_model(peer: Peer, **kwargs: Any) -> ChatOpenAI:
    """LangChain's ChatOpenAI on the Responses API: its chunks carry reasoning content blocks."""
    return ChatOpenAI(
        model="peer-think", base_url=peer.url + "/v1", api_key="not-needed", use_responses_api=True, streaming=True,
        **kwargs,
    )  # fmt: skip


def langchain_chunks(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    from kit.adapters.inputs import to_messages

    model = responses_model(peer)
    return lambda messages: model.stream(to_messages(messages))  # AIMessageChunk objects as they come


def scripted_chunks(kind: str) -> ScriptedSource:
    """AIMessageChunks as ChatDeepSeek / ChatOllama(reasoning=True) ("kwargs") or ChatAnthropic ("blocks") give them."""

    def thought(text: str) -> AIMessageChunk:
        if kind == "kwargs":
            return AIMessageChunk(content="", additional_kwargs={"reasoning_content": text})
        return AIMessageChunk(content=[{"type": "thinking", "thinking": text, "index": 0}])

    chunks = [*map(thought, pieces(PEER_THOUGHT)), *(AIMessageChunk(content=piece) for piece in pieces())]
    return ScriptedSource(chunks, delay_s=PIECE_DELAY_S)  # type: ignore[arg-type]


_tagged = ScriptedSource(pieces(f"<think>\n{PEER_THOUGHT}\n</think>\n\n{PEER_ANSWER}"), delay_s=PIECE_DELAY_S)
_opened = ScriptedSource([THINKING, *pieces(f"{PEER_THOUGHT}</think>\n\n{PEER_ANSWER}")], delay_s=PIECE_DELAY_S)  # type: ignore[list-item]
_kwargs_chunks, _block_chunks = scripted_chunks("kwargs"), scripted_chunks("blocks")


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 degrees in {city}."


def lcel_chain(model: Any) -> Any:
    return ChatPromptTemplate.from_messages([("human", "{question}")]) | model | StrOutputParser()


def _peer_case(
    name: str, make: SourceFactory, question: str = QUESTION, *, langchain: bool = False, **expected: Any
) -> CompatCase:
    peer = Peer()
    expected = {"expected": PEER_ANSWER, "thinking": PEER_THOUGHT, **expected}
    stopped = None if langchain else peer.abandoned  # see the module's docstring
    return CompatCase(name, lambda: make(peer), question, stopped=stopped, **expected)


def _scripted_case(name: str, source: ScriptedSource) -> CompatCase:
    return CompatCase(
        name, lambda: source, expected=PEER_ANSWER, thinking=PEER_THOUGHT, stopped=lambda: source.cancelled > 0
    )


CASES = [
    _peer_case("thinking: OpenAI SDK chunks, reasoning_content deltas (scripted peer)", openai_chunks("peer-think")),
    _peer_case(
        "thinking: OpenAI SDK chunks, reasoning deltas (vLLM, OpenRouter; scripted peer)",
        openai_chunks("peer-think-reasoning"),
    ),
    _peer_case("thinking: OpenAI SDK chat.completions.stream() events (scripted peer)", openai_helper_events),
    _peer_case(
        "thinking: OpenAI SDK chunks, <think> tags in the content (scripted peer)", openai_chunks("peer-think-tags")
    ),
    _peer_case(
        "thinking: OpenAI SDK Responses API, reasoning summary deltas (scripted peer)", responses_events("peer-think")
    ),
    _peer_case(
        "thinking: OpenAI SDK Responses API, reasoning text deltas (scripted peer)",
        responses_events("peer-think-text"),
    ),
    _peer_case("thinking: Anthropic SDK raw events, thinking_delta (scripted peer)", anthropic_events(helper=False)),
    _peer_case("thinking: Anthropic SDK MessageStream events (scripted peer)", anthropic_events(helper=True)),
    _peer_case("thinking: Ollama SDK ChatResponse, message.thinking (scripted peer)", ollama_chat),
    _peer_case("thinking: Ollama SDK GenerateResponse, thinking (scripted peer)", ollama_generate),
    _peer_case("thinking: LangChain ChatOpenAI chunks, reasoning content blocks (scripted peer)", langchain_chunks),
    _scripted_case("thinking: LangChain chunks, additional_kwargs reasoning_content (scripted)", _kwargs_chunks),
    _scripted_case("thinking: LangChain chunks, thinking content blocks (scripted)", _block_chunks),
    _scripted_case("thinking: generator of str, <think> tags torn across pieces (scripted)", _tagged),
    _scripted_case("thinking: generator of str starting inside thinking, THINKING marker (scripted)", _opened),
    _peer_case(
        "thinking: LCEL chain prompt | ChatOpenAI (Responses) | parser (scripted peer)",
        lambda peer: lcel_chain(responses_model(peer)),
        langchain=True,
    ),
    _peer_case(
        "thinking: LCEL chain, <think> tags from ChatOpenAI chat completions (scripted peer)",
        lambda peer: lcel_chain(
            ChatOpenAI(model="peer-think-tags", base_url=peer.url + "/v1", api_key="not-needed", streaming=True)
        ),
        langchain=True,
    ),
    _peer_case(
        "thinking: LCEL chain through the event stream, steps_role (scripted peer)",
        lambda peer: runnable_source(lcel_chain(responses_model(peer)), steps_role="steps"),
    ),
    _peer_case(
        "thinking: LangGraph StateGraph (scripted peer)",
        lambda peer: one_node_graph(responses_model(peer)),
        langchain=True,
    ),
    _peer_case(
        "thinking: agent with a tool, thinking, steps and answer bubbles (scripted peer)",
        lambda peer: graph_source(create_agent(responses_model(peer), tools=[get_weather]), steps_role="steps"),
        WEATHER_QUESTION,
        langchain=True,
        expected=WEATHER_ANSWER,
        thinking=TOOL_THOUGHT + RESULT_THOUGHT,
        bubbles=("thinking", "steps", "thinking", "ai"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_thinking_and_answer_each_stream_into_their_own_bubble(case: CompatCase) -> None:
    check_case(case)
