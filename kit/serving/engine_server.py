"""The kit's batched engine as a process of its own (`python -m kit engine`), speaking OpenAI-compatible
streaming chat completions, so that any number of web workers share one model (and vLLM or llama.cpp's server
could stand in its place).

`POST /v1/chat/completions` (`stream: true`: SSE `data:` chunks, `usage` in the last one, then `data: [DONE]`),
`GET /v1/models`, `GET /health` (slots, running, waiting, in_flight, max_queue), `GET /metrics` (Prometheus: the
queue, the slots, the tokens). A request is admitted as in process (beyond the slots and `max_queue`, a 503
before the first byte), queued fairly, and decoded with the others in one batch, with prefix reuse, host-memory
states and context shift (kit.model). A client whose connection closes (its web worker's Stop, a worker that
died) cancels its generation at once: one watcher thread waits for a hang-up on every open connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kit.errors import ChatError
from kit.model.batching import OPTIONS
from kit.model.engine import Admission, Engine
from kit.model.settings import ENGINE_URL_ENV, LlamaSettings
from kit.pipeline.cancel import CancelToken, peer_closed
from kit.pipeline.coalesce import DEFAULT_COALESCE_MS

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant"})
# OpenAI's names for options the kit's engine calls otherwise.
ALIASES = {"max_completion_tokens": "max_tokens", "repetition_penalty": "repeat_penalty"}
# Text that comes within DEFAULT_COALESCE_MS of the last text is held to the window's end and sent as one chunk:
# the web tier coalesces at the same 16 ms by default (StreamSettings.coalesce_ms), so its users see no later text,
# while a web worker reads and parses a chunk per window instead of per token (one user at 120 tokens/s: 460-530
# against 610-730 us of worker CPU per token here). A request may ask for its own ("coalesce_ms", 0: every token).
# A client that closed its side (FIN: its web worker's Stop, a worker that died) or reset the connection. Not
# POLLIN where POLLRDHUP exists (Linux): a client sends nothing while it reads, and readable bytes are not a
# hang-up. Elsewhere a FIN is only "readable", and a peek tells it from bytes.
CLOSED = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
HANG_UP = CLOSED | (0 if hasattr(select, "POLLRDHUP") else select.POLLIN)


class DisconnectWatcher:
    """Cancels a request's token when its client closes the connection, while the engine holds no byte for it.

    One thread waits in poll(2) on every open stream's socket for a hang-up and wakes only when a client leaves
    or the set of streams changes: a timed peek at every connection woke it 50 times a second beside the decode
    threads, and delayed a Stop by up to its period. `events`: what to wait for (HANG_UP for this platform).
    """

    def __init__(self, events: int = HANG_UP) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[socket.socket, CancelToken]] = {}  # by socket descriptor
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        threading.Thread(target=self._loop, name="kit-engine-disconnects", daemon=True).start()

    def watch(self, connection: socket.socket, cancel: CancelToken) -> None:
        with self._lock:
            self._watched[connection.fileno()] = (connection, cancel)
        self._wake()

    def forget(self, cancel: CancelToken) -> None:
        with self._lock:
            for descriptor in [fd for fd, (_, token) in self._watched.items() if token is cancel]:
                del self._watched[descriptor]
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending: it will do
            os.write(self._wake_write, b"!")

    def _loop(self) -> None:
        while True:
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            with self._lock:
                watched = dict(self._watched)
            for descriptor in watched:
                poller.register(descriptor, self._events)
            for descriptor, events in poller.poll():
                if descriptor == self._wake_read:
                    os.read(self._wake_read, 4096)
                    continue
                connection, cancel = watched[descriptor]
                gone = bool(events & CLOSED) or peer_closed(connection)
                with self._lock:  # still the same request's (its descriptor may have been closed and reused)
                    if self._watched.get(descriptor) == (connection, cancel):
                        # Seen, so no longer watched: a hang-up is cancelled below, and bytes left readable would
                        # wake the loop again and again.
                        del self._watched[descriptor]
                    else:
                        gone = False
                if gone:
                    cancel.cancel()


class EngineServer(ThreadingHTTPServer):
    """A threaded HTTP server over one `Engine`: a thread per open request, the engine's thread for them all."""

    daemon_threads = True
    allow_reuse_address = True  # a restarted engine takes its port back at once

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        settings: LlamaSettings,
        coalesce_ms: float = DEFAULT_COALESCE_MS,
    ) -> None:
        super().__init__(address, EngineHandler)
        self.engine = engine
        self.settings = settings
        self.coalesce_ms = coalesce_ms
        self.model_name = engine.model_path.name.removesuffix(".gguf")
        self.watcher = DisconnectWatcher()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def health(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "status": "ok",
            "model": self.model_name,
            "slots": engine.slots,
            "running": engine.running,
            "waiting": engine.waiting,
            "in_flight": engine.in_flight,
            "max_queue": self.settings.max_queue,
            "served": engine.served,
            "stopped": engine.stopped,
            "reuse": asdict(engine.reuse),
        }


def generation_options(body: dict[str, Any], settings: LlamaSettings) -> dict[str, Any]:
    """The engine's options from an OpenAI request body (the settings' values where it says nothing).

    >>> generation_options({"max_completion_tokens": 5, "stop": "."}, LlamaSettings())["max_tokens"]
    5
    """
    options: dict[str, Any] = settings.options()
    for key, value in body.items():
        name = ALIASES.get(key, key)
        if name in OPTIONS and value is not None:
            options[name] = value
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    return options


def coalesce_window(body: dict[str, Any], default_ms: float) -> float:
    """Seconds within which a reply's text is joined into one chunk: the request's `coalesce_ms`, else the server's.

    >>> coalesce_window({"coalesce_ms": 0}, 16.0), coalesce_window({}, 16.0)
    (0.0, 0.016)
    """
    value = body.get("coalesce_ms", default_ms)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1000:
        raise ChatError("`coalesce_ms` must be a number of milliseconds from 0 to 1000", 400)
    return float(value) / 1000


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The request's messages as chat-template dicts; text parts of a content list are joined.

    >>> chat_messages({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    [{'role': 'user', 'content': 'Hi'}]
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError("`messages` must be a non-empty list of {role, content} objects", 400)
    result = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ChatError(f"each message's role must be one of {sorted(ROLES)}, not {role!r}", 400)
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        result.append({"role": role, "content": str(content)})
    return result


class EngineHandler(BaseHTTPRequestHandler):
    """One HTTP request to the engine (HTTP/1.1, kept alive; a stream is sent chunked)."""

    protocol_version = "HTTP/1.1"
    # Headers, then the body or each event, are small writes: with Nagle's algorithm the second waits for the ACK
    # of the first, which the client delays on a kept-alive connection. A web worker's health check before each
    # stream took 40 ms so (measured: 44 ms from asking to the first text, 3 ms without Nagle).
    disable_nagle_algorithm = True
    server: EngineServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/health"):
            self._json(200, self.server.health())
        elif self.path == "/metrics":
            self._metrics()
        elif self.path == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "owned_by": "kit"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        cancel = CancelToken()
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            if not isinstance(body, dict):
                raise ChatError("the body must be a JSON object", 400)
            window_s = coalesce_window(body, self.server.coalesce_ms)
            admission, request = self._admit(body, cancel)
        except (ValueError, TypeError) as error:
            self._json(400, {"error": {"message": str(error), "type": "invalid_request_error"}})
            return
        except ChatError as error:
            self._json(error.status, {"error": {"message": error.message, "code": error.status}})
            return
        self.server.watcher.watch(self.connection, cancel)
        try:
            chunks = self.server.engine.run(request, window_s)
            if body.get("stream"):
                self._stream(chunks, cancel)
            else:
                self._whole(chunks)
        finally:
            self.server.watcher.forget(cancel)
            admission.release()

    def _admit(self, body: dict[str, Any], cancel: CancelToken) -> tuple[Admission, Any]:
        server = self.server
        messages = chat_messages(body)
        options = generation_options(body, server.settings)
        reuse = body.get("prefix_reuse", server.settings.prefix_reuse) is not False
        admission = server.engine.admit(cancel, server.settings.max_queue)
        try:
            return admission, server.engine.request(messages, cancel=cancel, reuse=reuse, **options)
        except BaseException:
            admission.release()
            raise

    def _stream(self, chunks: Iterator[dict[str, Any]], cancel: CancelToken) -> None:
        """Headers at once (the request may wait for a slot), then a chunk per piece, the error in-band."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        frame = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.server.model_name}
        try:
            with closing(chunks):
                try:
                    for chunk in chunks:
                        self._send(b"data: %s\n\n" % json.dumps({**chunk, **frame}, ensure_ascii=False).encode())
                except ChatError as error:
                    self._send(b"data: %s\n\n" % json.dumps({"error": {"message": error.message}}).encode())
                except Exception as error:
                    log.exception("generation failed")
                    self._send(b"data: %s\n\n" % json.dumps({"error": {"message": str(error)}}).encode())
            self._send(b"data: [DONE]\n\n")
            self._send(b"")
        except OSError:  # the client left while we wrote: its generation stops at the next step
            cancel.cancel()
            self.close_connection = True

    def _send(self, data: bytes) -> None:
        # One write per event (chunk size, data and CRLFs together): one packet, not four.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _whole(self, chunks: Iterator[dict[str, Any]]) -> None:
        texts: list[str] = []
        finish: dict[str, Any] = {}
        try:
            with closing(chunks):
                for chunk in chunks:
                    texts.append(chunk["choices"][0]["delta"].get("content") or "")
                    finish = chunk if chunk["choices"][0].get("finish_reason") else finish
        except ChatError as error:
            self._json(error.status, {"error": {"message": error.message, "type": "server_error"}})
            return
        message = {"role": "assistant", "content": "".join(texts)}
        choice = {"index": 0, "message": message, "finish_reason": finish.get("choices", [{}])[0].get("finish_reason")}
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        self._json(200, {**reply, "model": self.server.model_name, "choices": [choice], "usage": finish.get("usage")})

    def _metrics(self) -> None:
        """Prometheus' text format: the queue, the slots and the token counts, as vLLM's and llama.cpp's servers
        serve theirs (the web workers' /metrics have no engine figures when the engine is elsewhere)."""
        try:
            from kit.web.metrics import engine_metrics_text

            data, content_type = engine_metrics_text(self.server.engine.state)
        except ImportError:
            message = "metrics need prometheus_client: pip install 'kit[prod]' (or prometheus-client)"
            self._json(501, {"error": {"message": message, "type": "not_implemented"}})
            return
        self._body(200, content_type, data)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._body(status, "application/json", json.dumps(body, ensure_ascii=False).encode())

    def _body(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_engine(
    settings: LlamaSettings, host: str = "127.0.0.1", port: int = 8001, coalesce_ms: float = DEFAULT_COALESCE_MS
) -> EngineServer:
    """Load the model and bind its server (not yet serving: call `serve_forever()`, in a thread or not).

    The engine process `kit serve --prod` starts runs this; `LlamaSource(engine_url=server.url)` streams from it.
    """
    from kit.model.engine import engine_for

    engine = engine_for(settings)
    if not isinstance(engine, Engine):
        raise ValueError("the engine process runs the model itself: leave engine_url and KIT_ENGINE_URL unset")
    engine.load()
    return EngineServer((host, port), engine, settings, coalesce_ms)


def run_engine(
    host: str = "127.0.0.1", port: int = 8001, coalesce_ms: float = DEFAULT_COALESCE_MS, **settings: Any
) -> None:
    """`python -m kit engine`: load the model with these LlamaSettings fields and serve it until Ctrl-C."""
    from kit.serving.server import serve_forever

    os.environ.pop(ENGINE_URL_ENV, None)  # this process is the engine: its model runs here
    server = serve_engine(LlamaSettings(**settings), host, port, coalesce_ms)
    log.info("engine serving %s at %s", server.model_name, server.url)
    serve_forever(server)  # type: ignore[arg-type]  # any socketserver: it sets daemon threads and serves
