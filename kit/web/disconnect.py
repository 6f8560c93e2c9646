"""Notice a client that went away while its stream is idle, without waiting for a write to fail."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool]:
    """Return a cheap check for "the client closed the connection" (Stop button, closed tab).

    Under WSGI a failing write is the usual signal, but a write only happens on the next piece or
    heartbeat. werkzeug and gunicorn expose the socket, so an idle stream can peek at it: readable with
    zero bytes means the peer closed. Elsewhere the probe says "still there" and writes do the work.
    """
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return lambda: False

    def client_gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset or already closed
            return True

    return client_gone
