"""The engine as its own process (`python -m kit engine`): OpenAI-compatible streaming, the same replies as in
process, admission before the first byte, and Stop reaching its slot through a source, a chain and a graph."""

from __future__ import annotations

import json
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit import ChatLlama, LlamaSettings, LlamaSource, create_app, demo_chain, openai_chat_model
from kit.adapters.inputs import history_input
from kit.model.engine import engine_for
from kit.model.remote import RemoteEngine
from kit.notebook.child_server import ChildServer, free_port
from kit.pipeline.cancel import CancelToken
from kit.serving.client import Received, Reply, chat_body, iter_stream, stream_chat
from kit.serving.engine_server import CLOSED, HANG_UP, DisconnectWatcher
from kit.serving.launcher import SupervisedEngine
from tests.compat import one_node_graph
from tests.helpers import engine_metrics, wait_until

SLOTS, MAX_QUEUE, N_CTX = 4, 1, 512
# One llama.cpp thread: on a 2-core machine shared with other runs, two threads' spinning barriers cut the
# decode rate tenfold (measured: 1 against 9.6 tokens/s), and the same threads in and out of process.
THREADS = 1
GREEDY = {"max_tokens": 24, "temperature": 0, "seed": 1, "prefix_reuse": False}
LONG = "Count from 1 to 1000, separated by commas."  # runs to max_tokens without stopping
# Stop to a free slot: one decode step after the disconnect watcher wakes, but a decode step on a
# 2-core machine shared with other test runs can take seconds; a run to the end would take far longer.
FREED_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    """`python -m kit engine` on a free loopback port, 4 slots and a queue of 1."""
    port = free_port()
    command = [sys.executable, "-m", "kit", "engine", "--port", str(port), "--n-ctx", str(N_CTX)]
    command += ["--slots", str(SLOTS), "--max-queue", str(MAX_QUEUE), "--threads", str(THREADS)]
    with ChildServer(command, f"http://127.0.0.1:{port}/v1", "/models", timeout_s=180) as child:
        yield child.url


def health(url: str) -> dict[str, Any]:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


def sse_events(response: httpx.Response) -> Iterator[Any]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield "[DONE]" if line == "data: [DONE]" else json.loads(line[6:])


def test_it_streams_openai_chunks_with_usage_then_done_and_the_in_process_reply(engine_url: str) -> None:
    models = httpx.get(engine_url + "/models").json()
    assert models["data"][0]["id"].startswith("SmolLM2")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": "any", "messages": question, "stream": True, "max_completion_tokens": 24, "temperature": 0}
    with httpx.stream(
        "POST", engine_url + "/chat/completions", json={**body, "prefix_reuse": False}, timeout=120
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        events = list(sse_events(response))
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"] == {"role": "assistant"}
    last = events[-2]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"} and last["object"] == "chat.completion.chunk"
    texts = [e["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    assert 0 < last["usage"]["completion_tokens"] <= 24 and last["usage"]["prompt_tokens"] > 5
    assert len([t for t in texts if t]) > 3  # streamed, not in one block
    local = engine_for(LlamaSettings(n_ctx=N_CTX, slots=SLOTS, n_threads=THREADS))
    options = {"max_tokens": 24, "temperature": 0, "seed": None, "repeat_penalty": 1.1}
    assert "".join(texts) == "".join(local.chat(question, reuse=False, **options))  # one engine, two places
    whole = httpx.post(
        engine_url + "/chat/completions", json={**body, "stream": False, "prefix_reuse": False}, timeout=120
    )
    assert whole.json()["choices"][0]["message"]["content"] == "".join(texts)


def test_llama_source_and_chat_llama_stream_from_it_through_the_kit(engine_url: str, serve: Callable) -> None:
    remote = LlamaSource(LlamaSettings(engine_url=engine_url, **GREEDY))
    server = serve(create_app(remote, coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "What is the capital of France?", timeout=120)
    local = LlamaSource(LlamaSettings(n_ctx=N_CTX, slots=SLOTS, n_threads=THREADS, **GREEDY))
    alone = "".join(c["choices"][0]["delta"].get("content") or "" for c in local(reply_history(), _token()))
    assert reply.status == 200 and not reply.errors and reply.text == alone
    chain = demo_chain(ChatLlama(engine_url=engine_url, **GREEDY))
    embedded = demo_chain(ChatLlama(n_ctx=N_CTX, slots=SLOTS, n_threads=THREADS, **GREEDY))
    value = history_input()(reply_history())
    assert chain.invoke(value) == embedded.invoke(value)


def test_text_within_the_coalescing_window_comes_as_one_chunk_and_the_first_at_once(engine_url: str) -> None:
    def content_chunks(extra: dict[str, Any]) -> list[str]:
        body = {"messages": [{"role": "user", "content": LONG}], "stream": True, **GREEDY, **extra}
        with httpx.stream("POST", engine_url + "/chat/completions", json=body, timeout=120) as response:
            events = [e for e in sse_events(response) if e != "[DONE]"]
        return [e["choices"][0]["delta"]["content"] for e in events if e["choices"][0]["delta"].get("content")]

    every_token = content_chunks({"coalesce_ms": 0})
    grouped = content_chunks({"coalesce_ms": 1000})  # the first text at once, the rest by the second or the end
    assert len(every_token) >= 20 and "".join(grouped) == "".join(every_token)
    assert 2 <= len(grouped) < len(every_token) // 2 and grouped[0] == every_token[0]  # the first is not held
    refused = httpx.post(engine_url + "/chat/completions", json={"messages": [], "coalesce_ms": "soon"}, timeout=30)
    assert refused.status_code == 400 and "coalesce_ms" in refused.json()["error"]["message"]


def test_the_stream_s_coalescing_window_reaches_the_engine_process(engine_url: str, serve: Callable) -> None:
    question = [{"role": "user", "content": LONG}]
    options = {"max_tokens": 24, "temperature": 0, "seed": 1}

    def texts(window_s: float) -> list[str]:
        chunks = RemoteEngine(engine_url).open(question, CancelToken(), reuse=False, window_s=window_s, **options)
        return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]

    every_token, grouped = texts(0.0), texts(1.0)
    assert len(every_token) >= 20 and 2 <= len(grouped) < len(every_token) // 2
    assert "".join(grouped) == "".join(every_token)
    # A page asking for every token (coalesce_ms=0) gets an event per token through the engine process.
    remote = LlamaSource(LlamaSettings(engine_url=engine_url, **GREEDY))
    reply = stream_chat(serve(create_app(remote, coalesce_ms=0)).url + "chat-stream", LONG, timeout=120)
    assert reply.status == 200 and len([e for e in reply.events if e.get("text")]) >= 20


def test_its_metrics_show_the_slots_the_queue_and_every_token(engine_url: str) -> None:
    assert wait_until(lambda: health(engine_url)["running"] == 0, timeout=FREED_WITHIN_S)
    before = engine_metrics(engine_url)
    assert before["kit_engine_slots"] == SLOTS and before["kit_engine_busy_slots"] == 0
    assert before["kit_engine_queue_depth"] == 0
    question = [{"role": "user", "content": "Name three colours."}]
    body = {"model": "any", "messages": question, **GREEDY}
    usage = httpx.post(engine_url + "/chat/completions", json=body, timeout=120).json()["usage"]
    after = engine_metrics(engine_url)
    generated = after["kit_engine_generated_tokens_total"] - before["kit_engine_generated_tokens_total"]
    read = after["kit_engine_prompt_tokens_total{origin=read}"] - before["kit_engine_prompt_tokens_total{origin=read}"]
    assert (generated, read) == (usage["completion_tokens"], usage["prompt_tokens"]) and generated > 0
    with httpx.stream("POST", engine_url + "/chat/completions", json={**body, "stream": True}, timeout=120) as reply:
        next(reply.iter_lines())  # the headers and the role chunk: the slot is taken
        assert wait_until(lambda: engine_metrics(engine_url)["kit_engine_busy_slots"] == 1, timeout=FREED_WITHIN_S)


def reply_history() -> list[dict[str, str]]:
    return [{"role": "user", "text": "What is the capital of France?"}]


def _token() -> Any:
    from kit import CancelToken

    return CancelToken()


def test_a_full_engine_or_one_that_is_down_is_a_503_before_the_first_byte(engine_url: str, serve: Callable) -> None:
    body = {"messages": [{"role": "user", "content": LONG}], "stream": True, "max_tokens": 400, "temperature": 0}
    holders: list[httpx.Response] = []
    client = httpx.Client(timeout=120)
    try:
        for _ in range(SLOTS + MAX_QUEUE):  # every slot and the queue's one place
            response = client.send(
                client.build_request("POST", engine_url + "/chat/completions", json=body), stream=True
            )
            assert response.status_code == 200
            holders.append(response)
        assert wait_until(lambda: health(engine_url)["in_flight"] == SLOTS + MAX_QUEUE, timeout=30)
        server = serve(create_app(LlamaSource(engine_url=engine_url, max_tokens=8)))
        reply = stream_chat(server.url + "chat-stream", "Hi")
        assert reply.status == 503 and "busy" in reply.events[0]["error"]
    finally:
        for response in holders:
            response.close()
        client.close()
    assert wait_until(lambda: health(engine_url)["in_flight"] == 0 and health(engine_url)["running"] == 0, 60)
    down = serve(create_app(LlamaSource(engine_url=f"http://127.0.0.1:{free_port()}/v1")))
    reply = stream_chat(down.url + "chat-stream", "Hi")
    assert reply.status == 503 and "not answering" in reply.events[0]["error"]


def test_a_closed_connection_frees_its_slot(engine_url: str) -> None:
    stopped = health(engine_url)["stopped"]
    body = {"messages": [{"role": "user", "content": LONG}], "stream": True, "max_tokens": 400, "temperature": 0}
    with httpx.stream("POST", engine_url + "/chat/completions", json=body, timeout=120) as response:
        events = sse_events(response)
        next(events), next(events)  # the role, then the first text: it is generating
    assert wait_until(lambda: health(engine_url)["running"] == 0, FREED_WITHIN_S)
    assert health(engine_url)["stopped"] == stopped + 1  # ended early, not at its 400 tokens


def test_a_kept_alive_connection_gets_its_first_text_as_fast_as_a_new_one(engine_url: str) -> None:
    # Web workers keep their connections to the engine alive. With Nagle's algorithm on the engine's side, the
    # health answer's body waited for the ACK of its headers, which the client delays on such a connection: 40 ms.
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 1, "temperature": 0}

    def first_text_s(client: httpx.Client) -> float:
        started = time.perf_counter()
        client.get(engine_url.removesuffix("/v1") + "/health")  # as a web worker asks before each request
        with client.stream("POST", engine_url + "/chat/completions", json=body) as response:
            next(event for event in sse_events(response) if event != "[DONE]" and event["choices"][0]["delta"])
        return time.perf_counter() - started

    fresh = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
    with httpx.Client(timeout=60) as kept, fresh:
        first_text_s(kept)  # opens the connection that the next ones reuse
        kept_s = sorted(first_text_s(kept) for _ in range(5))[2]
        fresh_s = sorted(first_text_s(fresh) for _ in range(5))[2]
    assert kept_s < fresh_s + 0.02, (kept_s, fresh_s)


@pytest.mark.parametrize("events", ["this platform's", "readable (where POLLRDHUP is missing)"])
def test_the_disconnect_watcher_cancels_only_streams_whose_client_hung_up(events: str) -> None:
    watcher = DisconnectWatcher(HANG_UP if events == "this platform's" else select.POLLIN | CLOSED)
    pairs = [socket.socketpair() for _ in range(4)]
    tokens = [CancelToken() for _ in pairs]
    for (engine_side, _), token in zip(pairs, tokens, strict=True):
        watcher.watch(engine_side, token)
    watcher.forget(tokens[3])
    pairs[1][1].sendall(b"bytes, not a hang-up")
    pairs[3][1].close()  # forgotten: its request had ended
    pairs[2][1].shutdown(socket.SHUT_WR)  # a half close is a hang-up too (a worker's Stop shuts its side)
    pairs[0][1].close()
    assert wait_until(lambda: tokens[0].cancelled and tokens[2].cancelled, 5.0)
    # Both hang-ups were seen, so the watcher has polled past the other two sockets' events.
    assert not tokens[1].cancelled and not tokens[3].cancelled
    for engine_side, client_side in pairs:
        engine_side.close(), client_side.close()


def _paths(url: str) -> dict[str, Any]:
    long_reply = {"max_tokens": 400, "temperature": 0}
    return {
        "plain source": LlamaSource(engine_url=url, **long_reply),
        "LCEL chain, ChatLlama": demo_chain(ChatLlama(engine_url=url, **long_reply)),
        "LCEL chain, ChatOpenAI": demo_chain(openai_chat_model(url, **long_reply)),
        "LangGraph graph, ChatOpenAI": one_node_graph(openai_chat_model(url, **long_reply)),
    }


# When Stop closes the engine's HTTP stream under a ChatOpenAI chain, langchain-core's RunnableSequence generator
# raises OpenAIConnectionError as it is garbage-collected, at a moment of the collector's choosing: an exception
# "ignored in" a finalizer, which pytest turns into an error of whichever test runs then (one fresh run in four).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "path", ["plain source", "LCEL chain, ChatLlama", "LCEL chain, ChatOpenAI", "LangGraph graph, ChatOpenAI"]
)
def test_stop_frees_the_engine_slot_through_every_path(engine_url: str, serve: Callable, path: str) -> None:
    server = serve(create_app(_paths(engine_url)[path], coalesce_ms=0))
    stopped = health(engine_url)["stopped"]
    stream_id = secrets.token_hex(16)
    items = iter_stream(
        server.url + "chat-stream", chat_body(LONG), headers={"X-Kit-Stream-Id": stream_id}, timeout=120
    )
    reply = next(items)
    assert isinstance(reply, Reply) and reply.status == 200
    texts = (item for item in items if isinstance(item, Received) and item.payload and item.payload.get("text"))
    next(texts), next(texts)  # it streams
    assert health(engine_url)["running"] == 1
    asked = time.monotonic()
    assert httpx.post(server.url + "chat-stream/stop", content=stream_id).json() == {"stopped": True}
    rest = threading.Thread(target=lambda: list(items))  # the kit's stream ends too
    rest.start()
    assert wait_until(lambda: health(engine_url)["running"] == 0, FREED_WITHIN_S), path
    freed_s = time.monotonic() - asked
    rest.join(FREED_WITHIN_S)
    assert not rest.is_alive()
    # Ended by the Stop (the engine saw its client leave), not at the reply's 400 tokens.
    assert health(engine_url)["stopped"] == stopped + 1, (path, freed_s)


def test_an_engine_process_that_cannot_start_is_reported_not_restarted_forever(tmp_path: Path) -> None:
    engine = SupervisedEngine(["--model", str(tmp_path / "missing.gguf")])
    try:
        with pytest.raises(RuntimeError, match="exited with 1 before answering"):
            engine.start(timeout_s=120)
        assert engine.restarts == 0
    finally:
        engine.stop()
