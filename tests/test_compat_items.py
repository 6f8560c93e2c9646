"""The compatibility table's item rows: the streams client SDKs and plain generators give, passed as they are.

Each source is the code a user writes around their client (`for chunk in client...: yield chunk`), with the
client's own objects yielded unchanged. OpenAI chat completions come from llama-cpp-python's OpenAI-compatible
server on the real model; the Responses API, Anthropic and Ollama streams from scripted peers speaking those
wire formats (tests/sdk_peers.py), parsed by the real SDK clients; Hugging Face's TextIteratorStreamer is fed by
the real model's tokens. Served by `create_app` and read by a real SSE client (tests/compat.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import anthropic
import httpx
import httpx_sse
import numpy as np
import ollama
import openai
import pytest
from transformers import TextIteratorStreamer

from kit.model.settings import default_model_path
from kit.model.source import to_llama_messages
from kit.pipeline.cancel import CancelToken
from kit.pipeline.sources import Message
from kit.serving.server import BackgroundServer
from kit.testing.fakes import ScriptedSource
from tests.compat import CompatCase, check_case, llama_server_url, stop_llama_server
from tests.sdk_peers import PEER_ANSWER, PeerStats, peer_app, pieces

QUESTION = "Tell me about Paris in two sentences."
MAX_TOKENS = 48


class Peer:
    """A scripted SDK peer for one row, started on first use, with that row's own stream counts."""

    started: ClassVar[list[Peer]] = []

    def __init__(self) -> None:
        self.stats = PeerStats()
        self._server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            self._server = BackgroundServer(peer_app(self.stats))
            Peer.started.append(self)
        return self._server.url.rstrip("/")

    def abandoned(self) -> bool:
        """Stop reached the peer: a client closed one of its streams midway."""
        return self.stats.abandoned > 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module", autouse=True)
def stop_servers() -> Iterator[None]:
    yield
    for peer in Peer.started:
        peer.stop()
    Peer.started.clear()
    stop_llama_server()
    for streamer in _hugging_face:
        streamer.model.close()  # freed now, not by the interpreter's shutdown when llama.cpp is half gone
    _hugging_face.clear()


def openai_chat_chunks() -> Callable[[list[Message]], Iterator[Any]]:
    client = openai.OpenAI(base_url=llama_server_url(), api_key="not-needed")

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.chat.completions.create(
            model="local", messages=to_llama_messages(messages), stream=True, max_tokens=MAX_TOKENS, temperature=0
        ) as stream:
            yield from stream  # ChatCompletionChunk objects, as they come

    return source


def openai_stream_helper_events() -> Callable[[list[Message]], Iterator[Any]]:
    client = openai.OpenAI(base_url=llama_server_url(), api_key="not-needed")

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.chat.completions.stream(
            model="local", messages=to_llama_messages(messages), max_tokens=MAX_TOKENS, temperature=0
        ) as stream:
            yield from stream  # ChunkEvent, ContentDeltaEvent, ContentDoneEvent...

    return source


def openai_responses_events(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = openai.OpenAI(base_url=peer.url + "/v1", api_key="not-needed")

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.responses.create(model="peer", input=to_llama_messages(messages), stream=True) as stream:
            yield from stream

    return source


def anthropic_client(peer: Peer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=peer.url, api_key="not-needed")


def anthropic_raw_events(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = anthropic_client(peer)

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.messages.create(
            model="peer", max_tokens=MAX_TOKENS, messages=to_llama_messages(messages), stream=True
        ) as stream:
            yield from stream

    return source


def anthropic_message_stream(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = anthropic_client(peer)

    def source(messages: list[Message]) -> Iterator[Any]:
        with client.messages.stream(model="peer", max_tokens=MAX_TOKENS, messages=to_llama_messages(messages)) as s:
            yield from s  # raw events and the helper's "text" events: the text must not come twice

    return source


def anthropic_event_dicts(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    def source(messages: list[Message]) -> Iterator[Any]:
        body = {"model": "peer", "max_tokens": MAX_TOKENS, "messages": to_llama_messages(messages), "stream": True}
        with httpx.Client() as client, httpx_sse.connect_sse(client, "POST", peer.url + "/v1/messages", json=body) as s:
            for event in s.iter_sse():
                yield event.json()

    return source


def ollama_chat_responses(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = ollama.Client(host=peer.url)

    def source(messages: list[Message]) -> Iterator[Any]:
        yield from client.chat(model="peer", messages=to_llama_messages(messages), stream=True)

    return source


def ollama_generate_responses(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    client = ollama.Client(host=peer.url)

    def source(messages: list[Message]) -> Iterator[Any]:
        yield from client.generate(model="peer", prompt=str(messages[-1]["text"]), stream=True)

    return source


def ollama_chat_dicts(peer: Peer) -> Callable[[list[Message]], Iterator[Any]]:
    def source(messages: list[Message]) -> Iterator[Any]:
        body = {"model": "peer", "messages": to_llama_messages(messages), "stream": True}
        with httpx.Client() as client, client.stream("POST", peer.url + "/api/chat", json=body) as response:
            for line in response.iter_lines():
                if line:
                    yield httpx.Response(200, content=line).json()

    return source


def utf8_bytes(chunk_size: int = 4) -> Callable[[list[Message], CancelToken], Iterator[bytes]]:
    """A scripted generator of bytes cut every `chunk_size` bytes, so most cuts fall inside a character."""
    data = PEER_ANSWER.encode()

    def source(messages: list[Message], cancel: CancelToken) -> Iterator[bytes]:
        for start in range(0, len(data), chunk_size):
            if cancel.wait(0.01):
                return
            yield data[start : start + chunk_size]

    return source


class HuggingFaceStreamer:
    """Hugging Face's streaming pattern: generation runs in a thread and feeds a TextIteratorStreamer that the
    source iterates. The tokens come from the embedded model through llama-cpp-python (no torch here), decoded
    by the model's own detokenizer; Stop sets the flag a StoppingCriteria would check."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        self.model = Llama(str(default_model_path()), n_ctx=1024, verbose=False)
        self.end_of_turn = self.model.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]
        self.stopped = 0

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        """The one tokenizer method TextIteratorStreamer calls."""
        return self.model.detokenize(token_ids).decode("utf-8", errors="replace")

    def prompt(self, messages: list[Message]) -> list[int]:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in to_llama_messages(messages))
        return self.model.tokenize(f"{turns}<|im_start|>assistant\n".encode(), add_bos=False, special=True)

    def _generate(self, prompt: list[int], streamer: TextIteratorStreamer, stop: threading.Event) -> None:
        try:
            for count, token in enumerate(self.model.generate(prompt, temp=0.0, top_k=1)):
                if stop.is_set():
                    self.stopped += 1
                    break
                if token == self.end_of_turn or self.model.token_eos() == token or count == MAX_TOKENS:
                    break
                streamer.put(np.array([token]))
        finally:
            streamer.end()

    def __call__(self, messages: list[Message]) -> Iterator[str]:
        streamer = TextIteratorStreamer(self, timeout=60.0)
        stop = threading.Event()
        worker = threading.Thread(target=self._generate, args=(self.prompt(messages), streamer, stop))
        worker.start()
        try:
            yield from streamer
        finally:
            stop.set()
            worker.join()


_scripted_text = ScriptedSource(pieces(), delay_s=0.01)
_hugging_face: list[HuggingFaceStreamer] = []


def hugging_face() -> HuggingFaceStreamer:
    if not _hugging_face:
        _hugging_face.append(HuggingFaceStreamer())
    return _hugging_face[0]


def _peer_case(name: str, make: Callable[[Peer], Any]) -> CompatCase:
    peer = Peer()
    return CompatCase(name, lambda: make(peer), QUESTION, expected=PEER_ANSWER, stopped=peer.abandoned)


CASES = [
    CompatCase(
        "generator of str (scripted)",
        lambda: _scripted_text,
        expected=PEER_ANSWER,
        stopped=lambda: _scripted_text.cancelled > 0,
    ),
    CompatCase("generator of bytes, UTF-8 cut inside characters (scripted)", utf8_bytes, expected=PEER_ANSWER),
    CompatCase("OpenAI SDK ChatCompletionChunk (llama.cpp server)", openai_chat_chunks, QUESTION),
    CompatCase("OpenAI SDK chat.completions.stream() events (llama.cpp server)", openai_stream_helper_events, QUESTION),
    _peer_case("OpenAI SDK Responses API events (scripted peer)", openai_responses_events),
    _peer_case("Anthropic SDK raw stream events (scripted peer)", anthropic_raw_events),
    _peer_case("Anthropic SDK MessageStream events (scripted peer)", anthropic_message_stream),
    _peer_case("Anthropic events as dicts over httpx-sse (scripted peer)", anthropic_event_dicts),
    _peer_case("Ollama SDK ChatResponse objects (scripted peer)", ollama_chat_responses),
    _peer_case("Ollama chat chunks as dicts over NDJSON (scripted peer)", ollama_chat_dicts),
    _peer_case("Ollama SDK GenerateResponse objects (scripted peer)", ollama_generate_responses),
    CompatCase(
        "Hugging Face TextIteratorStreamer (embedded model)",
        hugging_face,
        QUESTION,
        stopped=lambda: hugging_face().stopped > 0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_stream_is_read_as_the_sdk_gives_it(case: CompatCase) -> None:
    check_case(case)
