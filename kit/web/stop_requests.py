"""Stop requests: cancelling a running stream by the id its client gave it.

A browser's Stop closes its connection, which is how the kit normally learns of it (kit.web.disconnect). Some
proxies keep reading the kit's reply after the browser has gone (jupyter-server-proxy, so every JupyterHub),
and the kit would never learn. So the kit's page names each stream (the `X-Kit-Stream-Id` header) and, when
Deep Chat aborts it, posts that id to `POST /chat-stream/stop`: an ordinary request, which every proxy passes.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Protocol

from kit.errors import ChatError
from kit.pipeline.pump import CancelToken

STREAM_ID_HEADER = "X-Kit-Stream-Id"
STOP_ROUTE = "/chat-stream/stop"
# Long and random (the page draws 128 bits), so that one user cannot guess another's stream.
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class SharedStopBoard(Protocol):
    """Stops shared by worker processes (kit.threads.stops.SharedStops): a stop posted on one reaches another."""

    def post(self, stream_id: str) -> None: ...

    def watch(self, stream_id: str, cancel: CancelToken) -> None: ...


class StopRequests:
    """The running streams that have an id, each with its cancel token.

    Tokens are held weakly: a stream that ended, however it ended, leaves nothing behind.

    >>> stops, token = StopRequests(), CancelToken()
    >>> stops.register("0123456789abcdef", token)
    >>> stops.stop("0123456789abcdef"), token.cancelled, stops.stop("fedcba9876543210")
    (True, True, False)
    """

    def __init__(self, shared: SharedStopBoard | None = None) -> None:
        self.shared = shared  # several workers: a stop for a stream served elsewhere goes through this board
        self._lock = threading.Lock()
        self._running: weakref.WeakValueDictionary[str, CancelToken] = weakref.WeakValueDictionary()

    def register(self, stream_id: str | None, cancel: CancelToken) -> None:
        """Remember a stream under the id its client sent (no id, or a malformed one: nothing to remember)."""
        if stream_id is not None and _STREAM_ID.fullmatch(stream_id):
            with self._lock:
                self._running[stream_id] = cancel
            if self.shared is not None:
                self.shared.watch(stream_id, cancel)

    def stop(self, stream_id: str) -> bool:
        """Cancel the stream with this id; False if none is running under it (it may have just ended)."""
        if not _STREAM_ID.fullmatch(stream_id):
            raise ChatError("a stop request's body is the stream id: 16 to 64 letters, digits, '-' or '_'", 400)
        with self._lock:
            cancel = self._running.pop(stream_id, None)
        if cancel is None:
            if self.shared is not None:
                self.shared.post(stream_id)  # the stream may run on another worker process
            return False
        cancel.cancel()
        return True
