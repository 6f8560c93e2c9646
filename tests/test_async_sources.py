"""Async sources: async generators, coroutine functions and async iterables stream like sync ones, on the kit's
one event loop, through real servers and real clients; Stop cancels their task and their cleanup runs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import json
import logging
import random
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import GenerationChunk
from langchain_core.runnables import RunnableGenerator, RunnableLambda
from langgraph.graph import END, START, MessagesState, StateGraph

from kit import CancelToken, ChatError, ServiceBusy, create_app
from kit.adapters.graphs import graph_source
from kit.adapters.inputs import last_user_text
from kit.adapters.registry import adapt as adapt_source
from kit.adapters.runnables import async_only_parts, runnable_source
from kit.pipeline.async_sources import iterate
from kit.pipeline.cancel import current_cancel
from kit.pipeline.event_loop import owned_loop, pending_tasks
from kit.pipeline.pump import live_producers
from kit.pipeline.shapes import SHAPES
from kit.serving.client import Received, chat_body, iter_stream, stream_chat
from kit.testing.fakes import ScriptedSource
from kit.web.blueprint import STOP_ROUTE, STREAM_ID_HEADER
from tests.helpers import wait_until
from tests.prod_server import REPO, ProdServer
from tests.sdk_peers import PEER_ANSWER, PeerStats, peer_app

WORDS = ["Hello", ", ", "async", " ", "world", "!"]
TEXT = "".join(WORDS)


# -- a scripted async source (a fake for unit tests: the compatibility rows use real SDK clients) -------------


@dataclass
class AsyncScripted:
    """The async twin of kit.testing.fakes.ScriptedSource: fixed pieces on a fixed schedule, an optional silence
    or failure, and a record of how each run ended (cancelled at an await, cleanup run, `async with` exited)."""

    pieces: list[str] = field(default_factory=lambda: list(WORDS))
    delay_s: float = 0.0
    silence_before_s: float = 0.0
    fail_after: int | None = None
    started: int = 0
    cancelled: int = 0
    cleaned: int = 0
    exits: list[type[BaseException] | None] = field(default_factory=list)

    async def __call__(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        self.started += 1
        try:
            async with _Held(self.exits):
                await asyncio.sleep(self.silence_before_s)
                start = asyncio.get_running_loop().time()
                for index, piece in enumerate(self.pieces):
                    if index == self.fail_after:
                        raise RuntimeError(f"scripted async failure after {index} pieces")
                    await asyncio.sleep(max(start + index * self.delay_s - asyncio.get_running_loop().time(), 0))
                    yield piece
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.cleaned += 1


class _Held:
    """An async context manager that records how it was left, as an SDK stream's `async with` would close."""

    def __init__(self, exits: list[type[BaseException] | None]) -> None:
        self.exits = exits

    async def __aenter__(self) -> None:
        await asyncio.sleep(0)

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        await asyncio.sleep(0)  # an await in the exit still runs after a cancel (a connection's close)
        self.exits.append(kind)


# -- every form of async source ------------------------------------------------------------------------------


async def agen(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
    for word in WORDS:
        await asyncio.sleep(0.001)
        yield word


async def agen_with_cancel(messages: list[dict[str, Any]], cancel: CancelToken) -> AsyncIterator[str]:
    assert isinstance(cancel, CancelToken)
    async for word in agen(messages):
        yield word


async def coroutine_of_str(messages: list[dict[str, Any]]) -> str:
    await asyncio.sleep(0)
    return TEXT


async def coroutine_of_async_stream(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
    await asyncio.sleep(0)
    return agen(messages)


async def coroutine_of_list(messages: list[dict[str, Any]]) -> list[str]:
    return list(WORDS)


class AsyncIterable:
    """An object with `__aiter__`: each request iterates it afresh."""

    def __aiter__(self) -> AsyncIterator[str]:
        return agen([])


def sync_returning_async_stream(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
    return agen(messages)


FORMS: dict[str, Callable[[], Any]] = {
    "async generator function": lambda: agen,
    "async generator function taking cancel=": lambda: agen_with_cancel,
    "coroutine function returning a str": lambda: coroutine_of_str,
    "coroutine function returning an async iterable": lambda: coroutine_of_async_stream,
    "coroutine function returning a list": lambda: coroutine_of_list,
    "object with __aiter__": AsyncIterable,
    "object with an async __call__": AsyncScripted,
    "functools.partial of an async generator function": lambda: functools.partial(agen),
    "plain function returning an async generator": lambda: sync_returning_async_stream,
}


@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_every_form_of_async_source_streams_and_answers(serve, form: str) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(FORMS[form](), coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "Hi")
    assert (reply.status, reply.text, reply.errors) == (200, TEXT, [])
    answer = httpx.post(server.url + "chat", json=chat_body("Hi"))
    assert answer.json() == {"text": TEXT}
    if form != "coroutine function returning a str":
        assert len(reply.events) > 1  # streamed, not gathered


def _shape_samples() -> list[tuple[Any, str]]:
    """One item of each shape the kit reads, with the text it carries."""
    return [
        ("Plain ", "Plain "),
        ({"choices": [{"delta": {"content": "chunk "}}]}, "chunk "),
        ({"type": "content.delta", "delta": "helper "}, "helper "),
        ({"type": "response.output_text.delta", "delta": "responses "}, "responses "),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "anthropic "}}, "anthropic "),
        ({"type": "text", "text": "doubled", "snapshot": "doubled"}, ""),
        (AIMessageChunk(content="langchain "), "langchain "),
        ({"message": {"role": "assistant", "content": "ollama "}, "done": False}, "ollama "),
        ({"response": "generate ", "done": False}, "generate "),
        (GenerationChunk(text="generation "), "generation "),
        ({"answer": "dict "}, "dict "),
        (b"caf" + b"\xc3", "caf"),
        (b"\xa9", "é"),
    ]


def test_every_item_shape_read_from_sync_sources_is_read_from_async_ones(serve) -> None:  # type: ignore[no-untyped-def]
    samples = _shape_samples()
    covered = {next(shape.name for shape in SHAPES if shape.recognises(item)) for item, _ in samples[:-2]}
    assert covered == {shape.name for shape in SHAPES}, "a shape of the table has no sample here"

    async def async_items(messages: list[dict[str, Any]]) -> AsyncIterator[Any]:
        for item, _ in samples:
            await asyncio.sleep(0)
            yield item

    expected = "".join(text for _, text in samples)
    sync_reply = stream_chat(serve(create_app(lambda m: (item for item, _ in samples))).url + "chat-stream", "Hi")
    async_reply = stream_chat(serve(create_app(async_items)).url + "chat-stream", "Hi")
    assert sync_reply.text == async_reply.text == expected and not async_reply.errors


# -- the same behaviour as sync sources: heartbeats, coalescing, errors, 503 -----------------------------------


def _sync_twin(scripted: AsyncScripted) -> ScriptedSource:
    return ScriptedSource(scripted.pieces, scripted.delay_s, scripted.silence_before_s, scripted.fail_after)


SCENARIOS = {
    "paced pieces": dict(delay_s=0.01),
    "a long silence first (heartbeats)": dict(silence_before_s=0.6),
    "an error mid-stream": dict(delay_s=0.005, fail_after=3),
    "many fast pieces (coalesced)": dict(pieces=[f"{n} " for n in range(400)]),
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=list(SCENARIOS))
def test_an_async_source_behaves_exactly_as_its_sync_twin(serve, scenario: str) -> None:  # type: ignore[no-untyped-def]
    scripted = AsyncScripted(**SCENARIOS[scenario])  # type: ignore[arg-type]
    replies = []
    for source in (_sync_twin(scripted), scripted):
        server = serve(create_app(source, heartbeat_s=0.2, coalesce_ms=16))
        replies.append(stream_chat(server.url + "chat-stream", "Hi"))
    sync, async_ = replies
    assert (async_.status, async_.text, async_.errors) == (sync.status, sync.text, sync.errors)
    assert (async_.heartbeats > 0) == (sync.heartbeats > 0)
    if scenario.startswith("a long silence"):
        assert async_.heartbeats >= 2 and async_.text == TEXT
    if scenario.startswith("an error"):
        assert async_.text == "".join(WORDS[:3]) and async_.events[-1] == {"error": async_.errors[0]}
    if scenario.startswith("many fast"):
        assert async_.text == "".join(scripted.pieces) and len(async_.events) < 400 / 4
    assert scripted.cleaned == scripted.started == 1


def test_an_async_error_is_one_in_band_error_with_its_traceback_in_the_log(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(AsyncScripted(fail_after=2)))
    with caplog.at_level(logging.ERROR):
        reply = stream_chat(server.url + "chat-stream", "Hi")
    assert reply.text == "Hello, " and len(reply.errors) == 1 and "interrupted" in reply.errors[0]
    failures = [record for record in caplog.records if record.exc_info]
    assert len(failures) == 1 and "scripted async failure" in str(failures[0].exc_info[1])
    frames = [line for line in caplog.text.splitlines() if "in __call__" in line]
    assert frames, "the traceback reaches into the async source"


def test_service_busy_awaited_before_the_stream_is_a_503(serve) -> None:  # type: ignore[no-untyped-def]
    async def busy(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        await asyncio.sleep(0)
        raise ServiceBusy("All model slots are busy; try again in a moment.")

    response = httpx.post(serve(create_app(busy)).url + "chat-stream", json=chat_body("Hi"))
    assert response.status_code == 503
    assert response.json() == {"error": "All model slots are busy; try again in a moment."}


def test_a_chat_error_inside_an_async_generator_is_in_band_as_for_a_sync_generator(serve) -> None:  # type: ignore[no-untyped-def]
    def sync_gen(messages: list[dict[str, Any]]) -> Iterator[str]:
        raise ChatError("No such document.", status=404)
        yield ""

    async def async_gen(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        raise ChatError("No such document.", status=404)
        yield ""

    for source in (sync_gen, async_gen):
        reply = stream_chat(serve(create_app(source)).url + "chat-stream", "Hi")
        assert (reply.status, reply.errors) == (200, ["No such document."])


def test_a_plain_function_returning_a_coroutine_gets_an_error_naming_the_fix(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    def forgot_async(messages: list[dict[str, Any]]) -> Any:
        return coroutine_of_str(messages)  # the coroutine is never awaited: that is the mistake

    server = serve(create_app(forgot_async))
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.ERROR):
        warnings.simplefilter("always")
        streamed = httpx.post(server.url + "chat-stream", json=chat_body("Hi"))
        answered = httpx.post(server.url + "chat", json=chat_body("Hi"))
        gc.collect()
    for response in (streamed, answered):
        assert response.status_code == 500
        error = response.json()["error"]
        assert "forgot_async returned a coroutine" in error and "async def" in error and "await" in error, error
    assert not [warning for warning in seen if "never awaited" in str(warning.message)]
    assert "returned a coroutine" in caplog.text


def test_a_one_shot_async_iterator_is_refused_when_the_app_is_created() -> None:
    stream = agen([])
    with pytest.raises(TypeError, match="async generator function itself"):
        create_app(stream)
    asyncio.run(stream.aclose())


def test_a_fast_async_source_waits_for_a_slow_reader_without_running_ahead() -> None:
    produced = [0]

    async def fast() -> AsyncIterator[int]:
        for number in range(2000):
            produced[0] += 1
            yield number

    consumed, lead = [], 0
    for number in iterate(fast(), CancelToken(), queue_size=4):
        consumed.append(number)
        lead = max(lead, produced[0] - len(consumed))
    assert consumed == list(range(2000))  # woken each time the reader made room: nothing lost, nothing stuck
    assert lead <= 4 + 1  # the queue's bound, and the item waiting for room


# -- Stop: the task is cancelled at its next await, and its cleanup runs --------------------------------------


def _read_until_text(url: str, headers: dict[str, str] | None = None) -> Iterator[Received | Any]:
    items = iter_stream(url, chat_body("Hi"), headers=headers)
    for item in items:
        if isinstance(item, Received) and item.payload and item.payload.get("text"):
            return items
    raise AssertionError("no text arrived")


def _slow() -> AsyncScripted:
    return AsyncScripted(pieces=[f"{n} " for n in range(500)], delay_s=0.01)


def test_closing_the_connection_cancels_the_task_and_its_cleanup_runs(serve) -> None:  # type: ignore[no-untyped-def]
    source = _slow()
    server = serve(create_app(source))
    producers = live_producers()
    items = _read_until_text(server.url + "chat-stream")
    items.close()  # what Deep Chat's Stop does
    assert wait_until(lambda: source.cleaned == 1, timeout=5)
    assert source.cancelled == 1 and source.exits == [asyncio.CancelledError]  # at an await; `async with` left
    assert wait_until(lambda: live_producers() <= producers and pending_tasks() == 0, timeout=5)


def test_the_stop_route_cancels_the_task_while_the_client_still_reads(serve) -> None:  # type: ignore[no-untyped-def]
    source = _slow()
    server = serve(create_app(source))
    stream_id = "async-stop-0123456789"
    items = _read_until_text(server.url + "chat-stream", {STREAM_ID_HEADER: stream_id})
    assert httpx.post(server.url + STOP_ROUTE.lstrip("/"), content=stream_id).json() == {"stopped": True}
    rest = list(items)  # the reply ends by itself, without an error
    assert all(isinstance(item, Received) and not (item.payload or {}).get("error") for item in rest)
    assert (source.cancelled, source.cleaned, source.exits) == (1, 1, [asyncio.CancelledError])
    assert wait_until(lambda: pending_tasks() == 0, timeout=5)


def test_a_token_cancelled_while_a_coroutine_source_is_awaited_cancels_it() -> None:
    ended: list[str] = []

    async def slow_start(messages: list[dict[str, Any]]) -> str:
        try:
            await asyncio.sleep(30)
            return "late"
        finally:
            ended.append("cleanup")

    cancel = CancelToken()
    start = adapt_source(slow_start)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The request thread awaits the coroutine before any header goes out, as it calls a plain function.
        pending = pool.submit(start, [{"role": "user", "text": "Hi"}], cancel)
        assert wait_until(lambda: pending_tasks() == 1, timeout=5)
        cancel.cancel()
        assert list(pending.result(timeout=5)) == []  # stopped before the stream began: nothing to send
    assert ended == ["cleanup"] and wait_until(lambda: pending_tasks() == 0, timeout=5)


def test_the_process_loop_stops_cleanly_at_exit_running_pending_cleanups() -> None:
    script = """
import asyncio, sys
from kit.pipeline.async_sources import iterate
from kit.pipeline.cancel import CancelToken

async def endless():
    try:
        while True:
            await asyncio.sleep(0.01)
            yield "x"
    finally:
        print("cleanup ran", flush=True)

items = iterate(endless(), CancelToken())
assert next(items) == "x"
sys.exit(0)  # the iterator is left open: the loop's exit hook must cancel the task
"""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cleanup ran" and done.stderr == "", done.stderr


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import asyncio, socket, time, gevent
from kit.pipeline.async_sources import iterate
from kit.pipeline.cancel import CancelToken

async def source():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, time.sleep, 0.01)  # the loop's executor
    await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)  # a name look-up runs there too
    for word in ("in ", "a ", "thread"):
        await asyncio.sleep(0.001)
        yield word

def request_greenlet():
    text = "".join(iterate(source(), CancelToken()))
    try:
        asyncio.get_running_loop()
        seen = "a running loop"
    except RuntimeError:
        seen = "no running loop"
    return text, seen, asyncio.run(asyncio.sleep(0, "asyncio.run works"))

print(*gevent.spawn(request_greenlet).get(), sep="; ")
"""


def test_under_gevent_the_loop_runs_in_an_os_thread_and_greenlets_stay_as_they_are() -> None:
    # Had the loop been a greenlet, every greenlet of the worker would see it as its running loop (asyncio keeps
    # one per OS thread), and `asyncio.run` in a request would refuse to start.
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", GEVENT_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "in a thread; no running loop; asyncio.run works", done.stdout + done.stderr


# -- one event loop per process, shared with LangChain's event streams -----------------------------------------


def test_async_sources_and_langchain_event_streams_share_one_loop(serve) -> None:  # type: ignore[no-untyped-def]
    loops: list[asyncio.AbstractEventLoop] = []

    async def record(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        loops.append(asyncio.get_running_loop())
        yield "source"

    async def step(text: str) -> str:
        loops.append(asyncio.get_running_loop())
        return text.upper()

    events_chain = runnable_source(RunnableLambda(step), to_input=last_user_text, include_names=["step"])
    stream_chat(serve(create_app(record)).url + "chat-stream", "Hi")
    stream_chat(serve(create_app(events_chain)).url + "chat-stream", "Hi")
    assert len(loops) == 2 and loops[0] is loops[1] is owned_loop()


# -- LangGraph graphs with async nodes, LCEL chains with only async parts -------------------------------------


def _fake_model(text: str = "The capital of France is Paris.") -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(text)] * 20))


def one_node_graph(node: Callable[[MessagesState], Any], checkpointer: Any = None) -> Any:
    """LangGraph's quickstart graph (MessagesState, one node) around `node`, named after its function."""
    graph = StateGraph(MessagesState)
    graph.add_node(node)
    graph.add_edge(START, node.__name__)
    graph.add_edge(node.__name__, END)
    return graph.compile(checkpointer=checkpointer)


def async_node_graph(model: Any, seen_tokens: list[CancelToken | None] | None = None) -> Any:
    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        if seen_tokens is not None:
            seen_tokens.append(current_cancel())
        return {"messages": [await model.ainvoke(state["messages"])]}

    return one_node_graph(call_model)


def test_a_graph_with_async_nodes_streams_token_by_token_with_the_cancel_token_bound(serve) -> None:  # type: ignore[no-untyped-def]
    tokens: list[CancelToken | None] = []
    graph = async_node_graph(_fake_model(), tokens)
    assert async_only_parts(graph) == ["call_model"] and graph_source(graph).asynchronous
    server = serve(create_app(graph, coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "Capital of France?")
    assert reply.text == httpx.post(server.url + "chat", json=chat_body("Hi")).json()["text"]
    assert reply.text == "The capital of France is Paris." and len(reply.events) > 3
    assert len(tokens) == 2 and all(isinstance(token, CancelToken) for token in tokens)
    assert tokens[0] is not tokens[1] and tokens[0].cancelled  # each request its own, cancelled once it ended


def test_a_sync_graph_still_runs_under_sync_stream() -> None:
    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [AIMessage("sync")]}

    compiled = one_node_graph(call_model)
    assert async_only_parts(compiled) == [] and not graph_source(compiled).asynchronous


def test_an_lcel_chain_with_only_async_parts_streams_token_by_token(serve) -> None:  # type: ignore[no-untyped-def]
    async def shout(text: str) -> str:
        return text.upper()

    async def words(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for text in chunks:
            for word in text.split():
                await asyncio.sleep(0.002)
                yield word + " "

    chain = RunnableLambda(shout) | RunnableGenerator(words)
    assert async_only_parts(chain) == ["shout", "words"]
    server = serve(create_app(runnable_source(chain, to_input=last_user_text), coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "one two three four")
    assert (reply.text, len(reply.events), reply.errors) == ("ONE TWO THREE FOUR ", 4, [])


# -- 100 concurrent async streams with random Stops, under gevent and under threads ----------------------------

STREAMS = 100


@dataclass
class Outcome:
    stop: str  # "", "close" or "route"
    text: str = ""
    errors: list[str] = field(default_factory=list)
    status: int = 0


async def _one_stream(client: httpx.AsyncClient, url: str, index: int, stop: str, after: int) -> Outcome:
    outcome, stream_id = Outcome(stop), f"load-{index:04d}-0123456789abcdef"
    headers = {"Accept": "text/event-stream", STREAM_ID_HEADER: stream_id}
    async with client.stream("POST", url + "chat-stream", json=chat_body("Hi"), headers=headers) as response:
        outcome.status, texts = response.status_code, 0
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = json.loads(line[5:])
            outcome.errors += [payload["error"]] if "error" in payload else []
            outcome.text += payload.get("text", "")
            texts += 1
            if stop and texts == after:
                if stop == "close":
                    break  # leaving the `async with` closes the connection
                await client.post(url + STOP_ROUTE.lstrip("/"), content=stream_id)
    return outcome


async def _load(url: str, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    plans = [(rng.choice(["", "", "close", "route"]), rng.randint(1, 6)) for _ in range(STREAMS)]
    limits = httpx.Limits(max_connections=2 * STREAMS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits) as client:
        tasks = [_one_stream(client, url, index, stop, after) for index, (stop, after) in enumerate(plans)]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)


def _worker_state(url: str) -> dict[str, int]:
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return client.get(url + "debug/async").json()


@pytest.mark.parametrize("worker_class", ["gevent", "threads"])
def test_100_concurrent_async_streams_with_random_stops_leak_nothing(worker_class: str) -> None:
    stats = PeerStats()
    with _peer(stats) as peer_url:
        app = f"tests.async_app:async_peer_app({peer_url!r})"
        options = ("--threads", str(STREAMS + 20)) if worker_class == "threads" else ()
        with ProdServer("--app", app, "--worker-class", worker_class, "--workers", "1", *options) as server:
            assert stream_chat(server.url + "chat-stream", "warm up").text == PEER_ANSWER  # the loop now runs
            # A named stream starts the worker's one poller for stops posted elsewhere (kit.threads.stops): it
            # stays for the process's life, so the baseline holds it.
            list(iter_stream(server.url + "chat-stream", chat_body("warm up"), headers={STREAM_ID_HEADER: "w" * 16}))
            # A Stop that comes before its stream started here is posted to the store for every worker: that
            # starts the process's one SQLite writer thread, which stays too.
            httpx.post(server.url + STOP_ROUTE.lstrip("/"), content="n" * 16, timeout=10).raise_for_status()
            baseline = _worker_state(server.url)
            started = time.monotonic()
            outcomes = asyncio.run(_load(server.url, seed=21))
            elapsed = time.monotonic() - started

            def settled() -> bool:
                state = _worker_state(server.url)
                return state["cleaned"] == state["started"] and all(
                    state[key] == baseline[key] for key in ("tasks", "producers", "threads", "sockets")
                )

            assert wait_until(settled, timeout=20), (baseline, _worker_state(server.url), server.log_tail())
            final = _worker_state(server.url)
    finished = [outcome for outcome in outcomes if not outcome.stop]
    stopped = [outcome for outcome in outcomes if outcome.stop]
    print(f"\n{worker_class}: {STREAMS} async streams ({len(stopped)} stopped) in {elapsed:.1f} s; worker {final}")
    assert [outcome.status for outcome in outcomes] == [200] * STREAMS
    assert [outcome.errors for outcome in outcomes if outcome.errors] == []
    assert all(outcome.text == PEER_ANSWER for outcome in finished) and len(finished) > STREAMS // 3
    # A Stop may come after the source has read the whole answer (a loaded machine delays the client): the reply
    # is then whole. Otherwise the source was cancelled, and only a cancelled source leaves the peer midway.
    assert all(PEER_ANSWER.startswith(outcome.text) for outcome in stopped) and len(stopped) > STREAMS // 4
    # The two warm-ups and every finished stream started; a stream stopped before its source was called did not.
    assert len(finished) + 2 <= final["started"] <= STREAMS + 2
    assert 0 < final["cancelled"] <= len(stopped)  # only Stops cancel
    # The sockets back to their count prove that cancelled sources closed their connections; the peer sees
    # them close midway only when it was still writing (a loaded machine lets it finish into socket buffers).
    assert stats.abandoned <= final["cancelled"]
    assert final["tasks"] == 0 and final["producers"] == 0


class _peer:
    """The Anthropic-shaped peer on loopback, for the worker's async sources to stream from."""

    def __init__(self, stats: PeerStats) -> None:
        from kit.serving.server import BackgroundServer

        # A stream lasts about 2 s: a loaded machine (100 streams, their client and this peer sharing 2 cores) can
        # leave the client a second behind what the worker has read, and a Stop must still find its source running.
        self._server = BackgroundServer(peer_app(stats, piece_delay_s=0.06))

    def __enter__(self) -> str:
        return self._server.url.rstrip("/")

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
