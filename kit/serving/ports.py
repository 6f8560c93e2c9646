"""Loopback ports for servers in child processes: a free one, and waiting until a server answers on it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a child that cannot bind port 0 and report it."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _nothing() -> None:
    pass


def wait_until_answering(
    url: str, timeout_s: float, *, ok_only: bool = False, check: Callable[[], None] = _nothing
) -> None:
    """Poll `url` until it answers (any HTTP status, or only 200 with `ok_only`) or `timeout_s` passes;
    `check()` runs before each attempt and may raise to give up early (say, on a child that exited)."""
    deadline = time.monotonic() + timeout_s
    # trust_env=False: an HTTP proxy set for the outside world must not intercept loopback.
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            check()
            try:
                status: int | None = client.get(url).status_code
            except httpx.TransportError:
                status = None  # not listening yet
            if status == 200 or (status is not None and not ok_only):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s} s")
            time.sleep(0.05)
