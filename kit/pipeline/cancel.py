"""Cancellation, in one place: the token a reply's parts share, the streams a process serves, and the ways a
reply learns it should stop (the client left, the user pressed Stop, the server is stopping).

The token travels with the request: the pump's producer obeys it (and sets it itself when the client reads
nothing for too long, kit.pipeline.pump), models deep inside a chain see it through a context variable
(`cancel_scope`), and the response loop sets it when a write fails or `client_gone` says the socket closed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import select
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

from kit.errors import ChatError
from kit.pipeline.scopes import value_scope

log = logging.getLogger(__name__)


class CancelToken:
    """Tells a running source that nobody is listening any more; sources may poll it or wait on it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a cancel callback failed")

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` once, in the cancelling thread, when the token is cancelled (here and now if it
        already is), for sources that cannot poll, such as an asyncio task; returns a function that forgets it.

        >>> token, seen = CancelToken(), []
        >>> forget = token.on_cancel(lambda: seen.append("stopped"))
        >>> token.cancel(); seen
        ['stopped']
        """
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel; True when cancelled."""
        return self._event.wait(timeout)


# -- the token of the request being served, seen by models deep inside a chain ---------------------------

# Context variables follow LangChain into its executor threads and asyncio tasks.
_current_cancel: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("kit_cancel", default=None)


def cancel_scope(cancel: CancelToken) -> contextlib.AbstractContextManager[None]:
    """Make `cancel` the token that models called inside this block obey.

    >>> token = CancelToken()
    >>> with cancel_scope(token):
    ...     current_cancel() is token
    True
    """
    return value_scope(_current_cancel, cancel)


def bind_cancel(cancel: CancelToken) -> None:
    """Make `cancel` the token for the rest of the current context (run it in a copied context)."""
    _current_cancel.set(cancel)


def current_cancel() -> CancelToken | None:
    """The token set by the innermost `cancel_scope`, if any."""
    return _current_cancel.get()


def bound_context(cancel: CancelToken) -> contextvars.Context:
    """A copy of the current context in which `cancel` is the token: run a chain in it (`context.run`), or
    hand it to an asyncio task, and the models inside obey the token.

    >>> token = CancelToken()
    >>> bound_context(token).run(current_cancel) is token
    True
    """
    context = contextvars.copy_context()
    context.run(bind_cancel, cancel)
    return context


# -- the streams a process is serving ----------------------------------------------------------------------

# Long and random (the page draws 128 bits), so that one user cannot guess another's stream.
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class OpenStreams:
    """The streams this process is serving, each with its cancel token and, if its client named it (the page's
    `X-Kit-Stream-Id`), its id. Tokens are held weakly: a stream that ended leaves nothing behind.

    >>> streams, token = OpenStreams(), CancelToken()
    >>> streams.add(token, "0123456789abcdef")
    >>> streams.stop("0123456789abcdef"), token.cancelled, streams.stop("fedcba9876543210")
    (True, True, False)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        self._by_id: weakref.WeakValueDictionary[str, CancelToken] = weakref.WeakValueDictionary()
        self._ended_by_server: weakref.WeakSet[CancelToken] = weakref.WeakSet()

    def add(self, cancel: CancelToken, stream_id: str | None = None) -> None:
        """Remember a stream (under the id its client sent; no id or a malformed one: not stoppable by id)."""
        with self._lock:
            self._tokens.add(cancel)
            if stream_id is not None and STREAM_ID.fullmatch(stream_id):
                self._by_id[stream_id] = cancel

    def discard(self, cancel: CancelToken) -> None:
        with self._lock:
            self._tokens.discard(cancel)
            self._ended_by_server.discard(cancel)

    def stop(self, stream_id: str) -> bool:
        """Cancel the stream with this id (the page's Stop); False if none runs under it (it may have ended)."""
        if not STREAM_ID.fullmatch(stream_id):
            raise ChatError("a stop request's body is the stream id: 16 to 64 letters, digits, '-' or '_'", 400)
        with self._lock:
            cancel = self._by_id.pop(stream_id, None)
        if cancel is None:
            return False
        cancel.cancel()
        return True

    def end_all(self) -> int:
        """Cancel every stream, marking each as ended by the server (it owes its client a "restarting" error).
        Returns how many there were."""
        with self._lock:
            tokens = list(self._tokens)
            self._ended_by_server.update(tokens)
        for token in tokens:
            token.cancel()
        return len(tokens)

    def ended_by_server(self, cancel: CancelToken) -> bool:
        with self._lock:
            return cancel in self._ended_by_server


OPEN_STREAMS = OpenStreams()
"""Every stream of this process: the stop route and a stopping server act through it."""


def end_open_streams() -> int:
    """End every stream this process is serving, each with a final "restarting" error event.

    For a server that is shutting down (kit.serving.production calls it when a gunicorn worker is told to
    stop): instead of waiting out long replies, clients learn at once and can send again. Returns how
    many streams were ended.
    """
    return OPEN_STREAMS.end_all()


# -- a client that left ---------------------------------------------------------------------------------------


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool]:
    """Return a cheap check for "the client closed the connection" (Stop button, closed tab).

    Under WSGI a failing write is the usual signal, but a write only happens on the next piece or
    heartbeat. werkzeug and gunicorn expose the socket, so an idle stream can peek at it: readable with
    zero bytes means the peer closed. Elsewhere the probe says "still there" and writes do the work.

    >>> client_gone_probe({})()
    False
    """
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return lambda: False
    return lambda: peer_closed(sock)


def peer_closed(sock: socket.socket) -> bool:
    """The peer closed its side of `sock` or reset it (readable with zero bytes, or an error), not sent bytes.

    >>> here, there = socket.socketpair()
    >>> before = peer_closed(here)
    >>> there.close()
    >>> before, peer_closed(here)
    (False, True)
    >>> here.close()
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset or already closed
        return True
