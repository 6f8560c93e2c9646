"""Run an app on werkzeug's threaded server, in the foreground or in a background thread."""

from __future__ import annotations

import contextlib
import errno
import io
import socket
import threading
import time
from types import TracebackType
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler


class PortInUse(OSError):
    """The port is taken; the message says how to pick another."""


class _BindFailed(Exception):
    """Carries a bind error past werkzeug, which would print it and call sys.exit(1)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _LastChunkFlushingWriter(io.BufferedWriter):
    """A buffered socket writer that also sends the last chunk of a streamed response at once.

    werkzeug writes the terminating `0` chunk without a flush, then drains the unread part of the request body
    until the client closes. A route that streams without reading its request body would wait for a client
    that waits for that last chunk: the reply never ends.
    """

    def write(self, data: Any) -> int:
        written = super().write(data)
        if len(data) == 5 and bytes(data) == b"0\r\n\r\n":
            self.flush()
        return written


class _WholeChunkHandler(WSGIRequestHandler):
    """werkzeug's handler with a buffered socket writer.

    werkzeug writes each chunk of a streamed response as four writes (size, CRLF, data, CRLF) and then
    flushes. Unbuffered, that is four packets per event; a reverse proxy that reads the data before the
    trailing CRLF holds the event back until the next one arrives. Buffered, each event leaves in one send.
    """

    wbufsize = -1  # the default buffer size; werkzeug flushes after every chunk

    def setup(self) -> None:
        super().setup()
        self.wfile = _LastChunkFlushingWriter(self.wfile.detach())

    def finish(self) -> None:
        # A client that left (Stop button, closed tab) leaves bytes in the buffer that cannot be sent;
        # closing the writer fails on them (it is closed all the same). Nobody is there to tell.
        try:
            super().finish()
        except OSError:
            self.rfile.close()


class _TrackingServer(ThreadedWSGIServer):
    """werkzeug's threaded server, remembering its open connections so that stop() can end them.

    Without this, stopping a server leaves open streams (and idle keep-alive connections) running in
    their daemon threads until the client goes away: a notebook that re-runs a cell would pile them up.
    """

    daemon_threads = True  # open streams must not keep the process alive
    # werkzeug listens with a queue of 128: a burst of a thousand connections at once (pages opening together)
    # overflowed it, and the kernel reset some of them before the server had read a byte.
    request_queue_size = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as error:
            # werkzeug answers an OSError here with sys.exit(1), which would end the caller (or show a bare
            # SystemExit in a notebook); any other exception passes through, and its socket is still closed.
            raise _BindFailed(error) from error

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="kit-connection", daemon=True
        )
        # Registered before it starts, so a connection accepted just before stop() is not missed.
        with self._lock:
            self._open[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open.pop(request, None)

    def close_connections(self, timeout_s: float) -> int:
        """End every open connection and wait up to `timeout_s` for their threads; returns how many are left.

        A shut-down socket makes a stream's next write fail and its idle disconnect probe fire, so the
        stream cancels its source within one probe interval.
        """
        with self._lock:
            open_now = dict(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):  # already closed by its own thread
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for thread in open_now.values():
            thread.join(max(deadline - time.monotonic(), 0.0))
        return sum(thread.is_alive() for thread in open_now.values())


def bind(app: Flask, host: str, port: int) -> _TrackingServer:
    """Create a threaded werkzeug server listening on host:port (0 picks a free port)."""
    try:
        return _TrackingServer(host, port, app, handler=_WholeChunkHandler)
    except _BindFailed as failed:
        error = failed.error
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use: stop the other server, or pass --port 0 "
                "(any free port) or another number"
            ) from error
        raise error from None


class BackgroundServer:
    """A werkzeug server in a daemon thread; `url` is ready as soon as the constructor returns.

    >>> from kit import create_app
    >>> with BackgroundServer(create_app("hi")) as server:
    ...     server.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server = bind(app, host, port)
        self.host = host
        self.port: int = self._server.socket.getsockname()[1]
        # A short poll interval makes stop() take milliseconds, not up to half a second (the default).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"kit-server-{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, ending with a slash."""
        return f"http://{self.host}:{self.port}/"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting requests, close the listening socket, end open streams and connections, and
        wait (up to `timeout_s`) for their threads."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._server.close_connections(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(server: BaseWSGIServer) -> None:
    """Serve in the foreground until Ctrl-C (the development server)."""
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
