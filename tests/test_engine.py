"""Scale-out: the same chain on an OpenAI-compatible engine (llama-cpp-python's own server), through the kit."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from kit import LlamaSource, create_app
from kit.adapters.inputs import history_input
from kit.adapters.ready_made import demo_chain, openai_chat_model
from kit.model.chat_model import ChatLlama
from kit.model.engine import engine_for
from kit.model.settings import LlamaSettings
from kit.notebook.child_server import start_llama_server
from kit.serving.client import Received, iter_stream, stream_chat

HISTORY = [{"role": "user", "text": "What is the capital of France?"}]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def openai_server() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback, with the embedded model; stopped after."""
    with start_llama_server() as child:
        yield child.url


def test_the_same_chain_streams_from_an_openai_compatible_server_through_the_kit(openai_server: str, serve) -> None:
    remote = openai_chat_model(openai_server, max_tokens=MAX_TOKENS, temperature=0, seed=1)
    chain = demo_chain(remote)
    server = serve(create_app(chain, coalesce_ms=0))
    with httpx.Client(timeout=120) as client:
        items = list(iter_stream(server.url + "chat-stream", {"messages": HISTORY}, client=client))
    events = [item.payload for item in items if isinstance(item, Received) and item.payload]
    assert items[0].status == 200 and not any("error" in e for e in events)
    text = "".join(e["text"] for e in events)
    assert len(events) > 3, "the reply came in one block, not streamed"
    # The token limit reached the engine (langchain-openai alone sends only max_completion_tokens, which
    # llama-cpp-python's server ignores; it would then generate until its context is full).
    tokens = engine_for(LlamaSettings()).tokenize(text)
    assert 0 < len(tokens) <= MAX_TOKENS + 2
    # The same chain on the embedded model gives the same greedy reply: one chain, two deployments.
    embedded = demo_chain(ChatLlama(max_tokens=MAX_TOKENS, temperature=0, seed=1, prefix_reuse=False))
    assert text == embedded.invoke(history_input()(HISTORY))


def test_llama_source_and_chat_llama_stream_from_another_openai_compatible_server(openai_server: str, serve) -> None:
    """The setting that points at the kit's engine process points at any OpenAI-compatible server as well."""
    source = LlamaSource(engine_url=openai_server, max_tokens=MAX_TOKENS, temperature=0, seed=1)
    server = serve(create_app(source, coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", HISTORY[0]["text"], timeout=120)
    assert reply.status == 200 and not reply.errors and len(reply.events) > 3
    remote = ChatLlama(engine_url=openai_server, max_tokens=MAX_TOKENS, temperature=0, seed=1)
    assert demo_chain(remote).invoke(history_input()(HISTORY))
    tokens = engine_for(LlamaSettings()).tokenize(reply.text)
    assert 0 < len(tokens) <= MAX_TOKENS + 2  # the token limit reached the server
