"""The model in another process: an OpenAI-compatible streaming chat-completions client with the Engine's face.

`LlamaSource` and `ChatLlama` given an engine address (`engine_url=`, or the `KIT_ENGINE_URL` variable) stream
from a server instead of a model in this process: the kit's own engine process (`python -m kit engine`), or
any OpenAI-compatible server (llama.cpp's `llama-server`, vLLM, llama-cpp-python's server). The kit's cancel
token shuts the HTTP connection down at once (`close_on_cancel`), so a Stop frees the server's slot instead of
leaving it generating for nobody; a server that is down or busy is an HTTP 503 before the first byte, one that
dies mid-stream an error in the stream.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from kit.errors import ChatError, ServiceBusy
from kit.model.chunks import ChatText
from kit.pipeline.cancel import CancelToken, current_cancel
from kit.pipeline.coalesce import DEFAULT_COALESCE_MS
from kit.pipeline.sse import sse_lines

UNREACHABLE = "The model engine at {url} is not answering ({error}); it may be restarting: try again in a moment."
LOST = "The connection to the model engine was lost mid-reply ({error}). Please try again."
# An OpenAI-compatible stream ends with `data: [DONE]`; llama-cpp-python's server, failing after its 200 (a chat
# template that cannot render the messages), closes the body without a word and logs the reason.
CUT = "The model server ended its reply without finishing it (no [DONE]); its log says why."
# Connecting and the status line are quick on a local socket; a reply streams for as long as it takes.
TIMEOUT = httpx.Timeout(10.0, read=None)


class RemoteAdmission:
    """A place asked of a remote engine: the server admits the request itself, so there is nothing to give back."""

    def release(self) -> None:
        pass


def close_on_cancel(response: httpx.Response, cancel: CancelToken | None = None) -> None:
    """Shut `response`'s connection down when `cancel` (default: the request's token) is cancelled.

    Closing a stream that another thread is reading does not end that read, and closing the iterator of an
    LCEL chain does not close its model's stream (langchain-core 1.8): the socket's shutdown does both,
    in whichever thread Stop runs, so the server sees the client leave. Forgotten when the response closes,
    so a pooled connection serving another request later is never touched.
    """
    cancel = cancel if cancel is not None else current_cancel()
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if cancel is None or not isinstance(sock, socket.socket):
        return

    def shut_down() -> None:
        if not response.is_closed:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    forget = cancel.on_cancel(shut_down)
    response.stream = _Forgetting(response.stream, forget)


class _Forgetting(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that forgets its cancel callback when it is closed."""

    def __init__(self, inner: Any, forget: Any) -> None:
        self.inner, self.forget = inner, forget

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def __aiter__(self) -> Any:
        return self.inner.__aiter__()

    def close(self) -> None:
        self.forget()
        self.inner.close()

    async def aclose(self) -> None:
        self.forget()
        await self.inner.aclose()


async def aclose_on_cancel(response: httpx.Response) -> None:
    """`close_on_cancel` as an httpx.AsyncClient response hook."""
    close_on_cancel(response)


def stopping_client(**kwargs: Any) -> httpx.Client:
    """An httpx client whose streams the request's cancel token shuts down (for LangChain's OpenAI model)."""
    return httpx.Client(event_hooks={"response": [close_on_cancel]}, **kwargs)


def stopping_async_client(**kwargs: Any) -> httpx.AsyncClient:
    """`stopping_client` for async code (a graph's async nodes, LangChain's event stream)."""
    return httpx.AsyncClient(event_hooks={"response": [aclose_on_cancel]}, **kwargs)


def read_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an OpenAI-style SSE stream's `data:` lines, up to `data: [DONE]`; a stream that ends
    before it was cut (a ChatError, 502), not an answer.

    >>> list(read_events(iter(['data: {"a": 1}', "", ": ping", "data: [DONE]", 'data: {"b": 2}'])))
    [{'a': 1}]
    >>> list(read_events(sse_lines(['data: {"a": "x\\u2028y"}\\n\\n', "data: [DONE]\\n\\n"])))  # U+2028 is text
    [{'a': 'x\\u2028y'}]
    >>> list(read_events(iter([])))
    Traceback (most recent call last):
    kit.errors.ChatError: The model server ended its reply without finishing it (no [DONE]); its log says why.
    """
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank lines, comments, other fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and event.get("error"):
            error = event["error"]
            raise ChatError(str(error.get("message") if isinstance(error, dict) else error), 503)
        yield event
    raise ChatError(CUT, 502)


class RemoteEngine(ChatText):
    """An OpenAI-compatible server at `url` (ending in `/v1`) behind the same calls as the in-process Engine.

    `open` starts a reply now (a busy or unreachable server is a ChatError with its status, before the first
    byte); `stream` and `chat` are lazy. Options are those of `Engine.stream`; `reuse=False` asks the kit's
    engine process for a fresh read (other servers ignore it).
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.root = self.url.removesuffix("/v1")
        # An HTTP proxy set for the outside world must not intercept loopback (a server elsewhere may need it).
        loopback = httpx.URL(self.url).host in ("127.0.0.1", "localhost", "::1")
        limits = httpx.Limits(max_keepalive_connections=64)
        self.client = httpx.Client(timeout=TIMEOUT, trust_env=not loopback, limits=limits)

    def health(self) -> dict[str, Any]:
        """The server's `/health` (the kit's engine: slots, running, waiting, in_flight, max_queue)."""
        try:
            response = self.client.get(self.root + "/health")
        except httpx.TransportError as error:
            raise ChatError(UNREACHABLE.format(url=self.url, error=error), 503) from error
        try:
            body = response.json()
        except ValueError:
            body = {}
        return body if isinstance(body, dict) else {}

    def admit(self, cancel: CancelToken, max_queue: int) -> RemoteAdmission:
        """Before the first byte: ServiceBusy when the server says its slots and queue are full (the kit's
        engine reports them; other servers admit everything), a 503 when it does not answer."""
        state = self.health()
        slots, busy = state.get("slots"), state.get("in_flight")
        if isinstance(slots, int) and isinstance(busy, int) and busy >= slots + int(state.get("max_queue", max_queue)):
            raise ServiceBusy(f"The model is busy: {busy - slots} request(s) are already waiting for it.")
        return RemoteAdmission()

    def open(
        self,
        messages: Sequence[Mapping[str, str]],
        cancel: CancelToken,
        *,
        reuse: bool = True,
        max_queue: int = 0,
        window_s: float | None = None,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Send the request now and return its chunks (llama-cpp-python's chunk shape). A coalescing window
        other than the default is asked of the kit's engine process (other servers ignore it)."""
        body: dict[str, Any] = {"model": "local", "messages": [dict(m) for m in messages], "stream": True}
        body.update({key: value for key, value in options.items() if value is not None})
        if not reuse:
            body["prefix_reuse"] = False
        if window_s is not None and window_s * 1000 != DEFAULT_COALESCE_MS:
            body["coalesce_ms"] = window_s * 1000
        request = self.client.build_request("POST", self.url + "/chat/completions", json=body)
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as error:
            raise ChatError(UNREACHABLE.format(url=self.url, error=error), 503) from error
        close_on_cancel(response, cancel)
        if response.status_code != 200:
            try:
                raise _refusal(response)
            finally:
                response.close()
        return self._chunks(response, cancel)

    def _chunks(self, response: httpx.Response, cancel: CancelToken) -> Iterator[dict[str, Any]]:
        try:
            yield from read_events(sse_lines(response.iter_text()))  # lines end at CR/LF only, not U+2028
        except httpx.TransportError as error:
            if not cancel.cancelled:  # a Stop shut the connection down on purpose
                raise ChatError(LOST.format(error=error), 503) from error
        except ChatError as error:
            if error.message != CUT or not cancel.cancelled:  # a Stop's shutdown may read as a clean end
                raise
        finally:
            response.close()

    def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        cancel: CancelToken | None = None,
        reuse: bool = True,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Like `Engine.stream`: the request goes out on the first `next()`."""
        token = cancel or current_cancel() or CancelToken()
        yield from self.open(messages, token, reuse=reuse, **options)


def _refusal(response: httpx.Response) -> ChatError:
    """The server's refusal (a non-200 response) as the kit's error."""
    response.read()
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    return refusal(response.status_code, body, response.reason_phrase)


def refusal(status: int, body: object, fallback: str = "") -> ChatError:
    """An OpenAI-compatible server's error response as the kit's error: the message of its body (`{"error":
    {"message": ...}}`, `{"error": "..."}`, the error object itself as OpenAI's SDK keeps it, or text), its
    status when the client is at fault (4xx, and 503 a ServiceBusy), otherwise 502: the kit's server is fine,
    the one behind it failed.

    >>> error = refusal(500, {"error": {"message": "can only concatenate str", "type": "internal_server_error"}})
    >>> error.message, error.status
    ('can only concatenate str', 502)
    """
    while isinstance(body, dict) and "error" in body:
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else body
    text = str(message or "").strip()[:500] or fallback or f"HTTP {status}"
    if status == 503:
        return ServiceBusy(text)
    return ChatError(text, status if 400 <= status < 500 else 502)


_remotes: dict[str, RemoteEngine] = {}
_remotes_lock = threading.Lock()


def remote_engine(url: str) -> RemoteEngine:
    """The process-wide client for the server at `url` (its connections are pooled)."""
    with _remotes_lock:
        engine = _remotes.get(url)
        if engine is None:
            engine = _remotes[url] = RemoteEngine(url)
        return engine
