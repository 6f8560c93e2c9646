"""The compatibility table's async rows: async generators, async SDK clients and graphs with async nodes, passed
to `create_app` as they are and run on the kit's event loop.

Each source is the code a user writes around an async client (`async for chunk in stream: yield chunk`). OpenAI
chat completions come from llama-cpp-python's OpenAI-compatible server on the real model; Anthropic and Ollama
streams from the scripted wire-format peers (tests/sdk_peers.py), parsed by the real `AsyncAnthropic` and
`ollama.AsyncClient`; the graph's async node calls the embedded model. Each source records how its runs ended
(`Runs`), outside the SDK's own `async with`, so a row's Stop check proves that the task was cancelled at an
await and that the SDK's exit (closing its connection) ran before the source's own cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import ollama
import openai
import pytest
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableGenerator, RunnableLambda
from langgraph.graph import MessagesState

from kit.adapters.inputs import last_user_text
from kit.adapters.runnables import runnable_source
from kit.model.source import to_llama_messages
from kit.pipeline.async_sources import run
from kit.pipeline.cancel import CancelToken
from kit.pipeline.sources import Message
from tests.compat import CompatCase, check_case, llama_server_url, stop_llama_server
from tests.sdk_peers import PEER_ANSWER, pieces
from tests.test_async_sources import one_node_graph
from tests.test_compat_chains import idle, kit_model
from tests.test_compat_items import MAX_TOKENS, QUESTION, Peer

AsyncSource = Callable[[list[Message]], Any]


class Runs:
    """How the runs of one row's async source ended: how many were cancelled at an await, and how many ran
    their cleanup (this `finally` comes after the SDK's `async with`, so its exit ran first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = self.cancelled = self.cleaned = 0

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[None]:
        with self._lock:
            self.started += 1
        try:
            yield
        except asyncio.CancelledError:
            with self._lock:
                self.cancelled += 1
            raise
        finally:
            with self._lock:
                self.cleaned += 1

    def stopped(self) -> bool:
        """A run was cancelled, and every run has finished its cleanup."""
        with self._lock:
            return self.cancelled > 0 and self.cleaned == self.started


_clients: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def stop_servers() -> Iterator[None]:
    yield
    for client in _clients:
        run(client.close(), CancelToken())  # on the kit's loop, where its connections live
    _clients.clear()
    for peer in Peer.started:
        peer.stop()
    Peer.started.clear()
    stop_llama_server()


def async_text(runs: Runs) -> AsyncSource:
    async def source(messages: list[Message]) -> AsyncIterator[str]:
        async with runs.watch():
            for piece in pieces():
                await asyncio.sleep(0.01)
                yield piece

    return source


def async_openai_chunks(runs: Runs) -> AsyncSource:
    async def source(messages: list[Message]) -> AsyncIterator[Any]:
        async with runs.watch(), openai.AsyncOpenAI(base_url=llama_server_url(), api_key="not-needed") as client:
            stream = await client.chat.completions.create(
                model="local", messages=to_llama_messages(messages), stream=True, max_tokens=MAX_TOKENS, temperature=0
            )
            async with stream:
                async for chunk in stream:
                    yield chunk  # ChatCompletionChunk objects, as they come

    return source


def async_anthropic_raw_events(peer: Peer, runs: Runs) -> AsyncSource:
    async def source(messages: list[Message]) -> AsyncIterator[Any]:
        async with runs.watch(), anthropic.AsyncAnthropic(base_url=peer.url, api_key="not-needed") as client:
            stream = await client.messages.create(
                model="peer", max_tokens=MAX_TOKENS, messages=to_llama_messages(messages), stream=True
            )
            async with stream:
                async for event in stream:
                    yield event

    return source


def async_anthropic_message_stream(peer: Peer, runs: Runs) -> AsyncSource:
    async def source(messages: list[Message]) -> AsyncIterator[Any]:
        async with runs.watch(), anthropic.AsyncAnthropic(base_url=peer.url, api_key="not-needed") as client:
            helper = client.messages.stream(model="peer", max_tokens=MAX_TOKENS, messages=to_llama_messages(messages))
            async with helper as stream:
                async for event in stream:
                    yield event  # raw events and the helper's "text" events: the text must not come twice

    return source


def ollama_async_chat(peer: Peer, runs: Runs) -> AsyncSource:
    """A coroutine that returns the SDK's async stream (no `yield` of its own): the kit iterates and closes it."""
    client = ollama.AsyncClient(host=peer.url)
    _clients.append(client)

    async def watched(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async with runs.watch(), contextlib.aclosing(stream):  # type: ignore[type-var]
            async for part in stream:
                yield part

    async def source(messages: list[Message]) -> AsyncIterator[Any]:
        return watched(await client.chat(model="peer", messages=to_llama_messages(messages), stream=True))

    return source


def async_node_graph(runs: Runs) -> Any:
    """The quickstart graph with its node written `async def`: only `astream` can run it."""
    model = kit_model()

    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        async with runs.watch():
            return {"messages": [await model.ainvoke(state["messages"])]}

    return one_node_graph(call_model)


def async_steps_chain(runs: Runs) -> Any:
    """An LCEL chain whose own steps are async: a lookup before the prompt, a streaming filter after the model."""

    async def with_context(question: str) -> dict[str, str]:
        await asyncio.sleep(0)  # where a retriever would await its store
        return {"question": question}

    async def passed_on(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async with runs.watch():
            async for chunk in chunks:
                yield chunk

    prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
    chain = RunnableLambda(with_context) | prompt | kit_model() | StrOutputParser() | RunnableGenerator(passed_on)
    return runnable_source(chain, to_input=last_user_text)


def _row(name: str, make: Callable[[Runs], Any], prompt: str = QUESTION, expected: str | None = None) -> CompatCase:
    runs = Runs()
    return CompatCase(name, lambda: make(runs), prompt, expected=expected, stopped=runs.stopped)


def _peer_row(name: str, make: Callable[[Peer, Runs], Any]) -> CompatCase:
    peer, runs = Peer(), Runs()
    stopped = lambda: runs.stopped() and peer.abandoned()  # noqa: E731
    return CompatCase(name, lambda: make(peer, runs), QUESTION, expected=PEER_ANSWER, stopped=stopped)


def _model_row(name: str, make: Callable[[Runs], Any]) -> CompatCase:
    runs = Runs()
    # The model runs in an executor thread under the awaiting task: Stop frees it at its next token.
    return CompatCase(name, lambda: make(runs), QUESTION, stopped=lambda: runs.stopped() and idle())


CASES = [
    _row("async generator of str (scripted)", async_text, expected=PEER_ANSWER),
    _row("AsyncOpenAI ChatCompletionChunk (llama.cpp server)", async_openai_chunks),
    _peer_row("AsyncAnthropic raw stream events (scripted peer)", async_anthropic_raw_events),
    _peer_row("AsyncAnthropic MessageStream events (scripted peer)", async_anthropic_message_stream),
    _peer_row("ollama.AsyncClient chat stream returned by a coroutine (scripted peer)", ollama_async_chat),
    _model_row("LangGraph graph with an async node (embedded model)", async_node_graph),
    _model_row("LCEL chain with an async step (embedded model)", async_steps_chain),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_async_source_streams_as_a_user_passes_it(case: CompatCase) -> None:
    check_case(case)
