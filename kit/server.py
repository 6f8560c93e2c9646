"""Run an app on werkzeug's threaded server, in the foreground or in a background thread."""

from __future__ import annotations

import errno
import threading
from types import TracebackType

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server


class PortInUse(OSError):
    """The port is taken; the message says how to pick another."""


def bind(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """Create a threaded werkzeug server listening on host:port (0 picks a free port)."""
    try:
        return make_server(host, port, app, threaded=True)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use: stop the other server, or pass --port 0 "
                "(any free port) or another number"
            ) from error
        raise


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
        # Open streams must not keep the process alive, nor make stop() wait for them.
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"kit-server-{self.port}")
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, ending with a slash."""
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        """Stop accepting requests, close the listening socket, and wait for the serving thread."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

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
