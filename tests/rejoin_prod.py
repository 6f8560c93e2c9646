"""Two gunicorn workers on one PostgreSQL thread store, behind nginx whose upstream a test (or a benchmark) switches
from one to the other mid-reply: the page's next request (a reload) reaches the worker that does not run its reply.

Each worker is a gunicorn of its own (`--workers 1`) so that the test, not the kernel, chooses which one a request
reaches; nginx reloads its configuration gracefully (SIGHUP), so the stream already open stays on the old worker
while every new connection goes to the other. The app gunicorn serves is `long_app` (imported by name).
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType

import httpx
from flask import Flask

from kit import create_app
from kit.testing.fakes import ScriptedSource
from kit.threads.store import PostgresThreadStore
from tests.nginx import Nginx
from tests.prod_server import WORKER_HEADER, ProdServer, named_by_worker


def long_reply(pieces: int) -> list[str]:
    """`pieces` pieces ("tokens") as a model writes them: words, punctuation and paragraph breaks."""
    return [
        f"w{index}{',' if index % 7 == 3 else ''}{chr(10) * 2 if index % 97 == 96 else ' '}" for index in range(pieces)
    ]


def long_app(url: str, pieces: int, delay_s: float) -> Flask:
    """gunicorn factory: a scripted reply of `pieces` pieces, `delay_s` apart, threads on PostgreSQL at `url`;
    each response names its worker."""
    source = ScriptedSource(long_reply(pieces), delay_s=delay_s)
    return named_by_worker(create_app(source, thread_store=PostgresThreadStore(url)))


class TwoWorkers:
    """Two one-worker gunicorns sharing the PostgreSQL at `postgres_url`, nginx in front (`url`) on the first;
    they serve `long_app`, or `app` (a gunicorn app factory call, by name) when given."""

    def __init__(self, postgres_url: str, pieces: int = 0, delay_s: float = 0.0, app: str | None = None) -> None:
        app = app or f"tests.rejoin_prod:long_app({postgres_url!r}, {pieces}, {delay_s})"
        self.servers: list[ProdServer] = []
        self.nginx: Nginx | None = None
        try:
            self.servers = [ProdServer("--workers", "1", "--app", app) for _ in range(2)]
            self.current = 0
            self.nginx = Nginx(self._upstream(0))
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def worker_pid(self, index: int) -> int:
        return self.servers[index].worker_pids[-1]

    def _upstream(self, index: int) -> str:
        return f"127.0.0.1:{self.servers[index].port}"

    def switch(self, timeout_s: float = 15.0) -> int:
        """Send every new connection to the other worker (the open ones stay); returns that worker's pid."""
        assert self.nginx is not None
        self.current = 1 - self.current
        self.nginx.switch(self._upstream(self.current))
        wanted = str(self.worker_pid(self.current))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # nginx's new worker takes over new connections a moment after SIGHUP
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "healthz", timeout=2).headers.get(WORKER_HEADER) == wanted:
                    return int(wanted)
            time.sleep(0.02)
        raise RuntimeError(f"nginx never switched to {self._upstream(self.current)}:\n{self.nginx.error_log()}")

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.close()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> TwoWorkers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
