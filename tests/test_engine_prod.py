"""4 gunicorn workers and one engine process (`kit serve --prod --engine`): 16 streams at once, some stopped
through whichever worker a Stop reaches; an engine killed mid-stream is one error event per open stream and
is back for the next request; a worker killed mid-stream frees its slots in the engine."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from kit import CancelToken, LlamaSource, create_app
from kit.serving.client import Received, Reply, chat_body, iter_stream, stream_chat
from kit.serving.ports import free_port
from kit.web.blueprint import STREAM_ID_HEADER
from tests.helpers import engine_metrics, wait_until
from tests.prod_server import WORKER_HEADER, ProdServer, named_by_worker

pytestmark = pytest.mark.timeout(600)
WORDS = ["apple", "river", "guitar", "pencil", "tiger", "window", "rocket", "banana"]
WORDS += ["castle", "violin", "garden", "camera", "dolphin", "candle", "bridge", "forest"]
# Runs to the end of its slot (700 greedy tokens measured without an end); "Count from 1 to 1000" ended by itself
# after 51 tokens, so on a slow run a Stop sometimes came after its reply had ended (3 stops counted of 4).
LONG = "Write a very long story about a dragon who learns to bake bread, with many chapters."
_ENGINE_PID = re.compile(r"engine process started with pid: (\d+) at (\S+)")


def engine_app(store: str) -> Flask:
    """gunicorn factory: the embedded model's source, which the launcher points at its engine process. A
    LONG question gets a reply long enough (to the end of its 1,024-token slot, read from an empty sequence so it
    is the same reply whoever used the slot before) that a Stop always lands while it is generating."""
    short = LlamaSource(max_tokens=48, temperature=0, seed=1)
    long = LlamaSource(max_tokens=1024, temperature=0, seed=1, prefix_reuse=False)

    def reply(messages: list[dict[str, Any]], cancel: CancelToken) -> Iterator[dict[str, Any]]:
        return (long if messages[-1].get("text") == LONG else short)(messages, cancel)

    return named_by_worker(create_app(reply, thread_store=store, coalesce_ms=0))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ProdServer]:
    app = f"tests.test_engine_prod:engine_app({str(tmp_path / 'threads.sqlite')!r})"
    args = ["--workers", "4", "--app", app, "--engine", "--n-ctx", "1024", "--slots", "8"]
    args += ["--engine-threads", "1"]  # see tests/test_engine_process.py: spinning threads on a shared machine
    engine_port = free_port()
    with ProdServer(*args, "--engine-port", str(engine_port), timeout_s=300) as prod:
        assert engine_of(prod)[1] == f"http://127.0.0.1:{engine_port}"  # where Prometheus finds its /metrics
        yield prod


def engine_of(server: ProdServer) -> tuple[int, str]:
    """The engine process's pid (the newest) and its base URL, from the launcher's log."""
    found = [match for line in server.log if (match := _ENGINE_PID.search(line))]
    return int(found[-1].group(1)), found[-1].group(2).removesuffix("/v1")


def health(server: ProdServer) -> dict[str, Any]:
    return httpx.get(engine_of(server)[1] + "/health", timeout=10).json()


class Stream:
    """One chat stream read in a thread: its worker, its text, its errors."""

    def __init__(self, server: ProdServer, text: str, max_tokens: int | None = None) -> None:
        self.stream_id = secrets.token_hex(16)
        self.items = iter_stream(
            server.url + "chat-stream", chat_body(text), headers={STREAM_ID_HEADER: self.stream_id}, timeout=300
        )
        self.text, self.errors, self.worker = "", [], 0
        self.replied, self.started, self.done = threading.Event(), threading.Event(), threading.Event()
        self.failure: BaseException | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self.items:
                if isinstance(item, Reply):
                    self.worker = int(item.headers.get(WORKER_HEADER.lower()) or 0)
                    self.replied.set()
                elif isinstance(item, Received) and item.payload:
                    self.text += item.payload.get("text", "")
                    self.errors += [item.payload["error"]] if "error" in item.payload else []
                    self.started.set()
        except BaseException as error:
            self.failure = error
        finally:
            self.replied.set()
            self.started.set()
            self.done.set()


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """Pause these workers (SIGSTOP): a paused process accepts nothing, so new connections go to the others."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_sixteen_streams_through_four_workers_some_stopped_all_exact(server: ProdServer) -> None:
    stopped_before = health(server)["stopped"]
    # 4 of the 16 ask for a long reply, and are stopped through another worker than the one holding them.
    asks = [LONG if i % 4 == 0 else f"Write one sentence about a {w}." for i, w in enumerate(WORDS)]
    streams: list[Stream] = []
    workers = server.worker_pids[:4]
    for index, worker in enumerate(workers):  # 4 streams on each worker
        with paused([pid for pid in workers if pid != worker]):
            batch = [Stream(server, ask) for ask in asks[index * 4 : index * 4 + 4]]
            assert all(stream.replied.wait(60) for stream in batch)
        assert {stream.worker for stream in batch} == {worker}
        streams += batch
    stopped = streams[::4]
    for stream in stopped:
        assert stream.started.wait(300)
        with paused([stream.worker]):  # the Stop lands on another worker and reaches the holder's stream
            stop = httpx.post(server.url + "chat-stream/stop", content=stream.stream_id, timeout=10)
            assert stop.json() == {"stopped": False} and int(stop.headers[WORKER_HEADER]) != stream.worker
    for stream in streams:
        assert stream.done.wait(300) and stream.failure is None and not stream.errors, stream.errors
    for word, stream in zip(WORDS, streams, strict=True):
        if stream in stopped:
            continue
        reply = stream.text.lower()
        assert word in reply and not [w for w in WORDS if w != word and w in reply], (word, stream.text)
    # Each Stop reached the engine (its generation ended early), and no slot or place is left behind.
    assert wait_until(lambda: health(server)["running"] == 0 and health(server)["in_flight"] == 0, 60)
    assert health(server)["stopped"] - stopped_before == len(stopped)
    figures = engine_metrics(engine_of(server)[1])  # the engine's own /metrics: the workers' have no engine figures
    gauges = ("kit_engine_slots", "kit_engine_busy_slots", "kit_engine_queue_depth")
    assert tuple(figures[name] for name in gauges) == (8, 0, 0)
    assert figures["kit_engine_generated_tokens_total"] >= sum(len(stream.text) > 0 for stream in streams)


def test_an_engine_killed_mid_stream_is_one_error_per_stream_and_back_for_the_next(server: ProdServer) -> None:
    streams = [Stream(server, LONG) for _ in range(3)]
    assert all(stream.started.wait(300) for stream in streams)
    pid, _ = engine_of(server)
    os.kill(pid, signal.SIGKILL)
    for stream in streams:
        assert stream.done.wait(60) and stream.failure is None
        assert len(stream.errors) == 1 and stream.text, (stream.errors, stream.text)
    # The launcher starts it again on the same port; the workers' next requests find it.
    assert wait_until(lambda: engine_of(server)[0] != pid, 60)
    answers: list[Reply] = []

    def answered() -> bool:
        reply = stream_chat(server.url + "chat-stream", "What is the capital of France?", timeout=120)
        answers.append(reply)
        return reply.status == 200 and not reply.errors and bool(reply.text)

    assert wait_until(answered, 180), [(a.status, a.errors) for a in answers[-3:]]
    assert all(a.status in (200, 503) for a in answers)  # while it loads: a clear 503, never a hang


def test_a_web_worker_killed_mid_stream_frees_its_slots(server: ProdServer) -> None:
    streams = [Stream(server, LONG) for _ in range(4)]
    assert all(stream.started.wait(300) for stream in streams)
    assert health(server)["running"] == 4
    stopped_before = health(server)["stopped"]
    victim = streams[0].worker
    held = [stream for stream in streams if stream.worker == victim]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: health(server)["stopped"] - stopped_before >= len(held), 60)
    for stream in streams:  # the others stream on, unharmed
        assert stream.done.wait(300)
        if stream.worker != victim:
            assert stream.failure is None and not stream.errors and len(stream.text) > 20
    assert wait_until(lambda: health(server)["running"] == 0, 60)
