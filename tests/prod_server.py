"""The kit under gunicorn (`python -m kit serve --prod`) as a subprocess on a free loopback port, and the
apps the reliability tests have it serve (gunicorn imports them by name, so they live in a module).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import httpx
from flask import Flask, Response

from kit import CancelToken, create_app
from tests.helpers import rss_bytes

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Listening at: http://[\d.]+:(\d+)")
_BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def paced_source(pieces: int, interval_ms: float) -> Callable[[list[dict[str, object]], CancelToken], Iterator[str]]:
    """A source that yields `pieces` pieces on an absolute schedule, each stamped with the wall-clock time
    it was yielded: `"0007 1732412345.123456\\n"`. The client checks every number arrives once, in order,
    and subtracts the stamp from its own clock (same machine) to get the latency the kit added.
    """

    def source(messages: list[dict[str, object]], cancel: CancelToken) -> Iterator[str]:
        start = time.monotonic()
        for index in range(pieces):
            if cancel.wait(max(start + index * interval_ms / 1000 - time.monotonic(), 0.0)):
                return
            yield f"{index:04d} {time.time():.6f}\n"

    return source


WORKER_HEADER = "X-Test-Worker-Pid"


def named_by_worker(app: Flask) -> Flask:
    """Make each response name the worker process that served it (`WORKER_HEADER`), for tests that aim at one."""

    @app.after_request
    def name_the_worker(response: Response) -> Response:
        response.headers[WORKER_HEADER] = str(os.getpid())
        return response

    return app


def paced_app(pieces: int = 200, interval_ms: float = 50.0, heartbeat_s: float = 2.0) -> Flask:
    """gunicorn factory: `tests.prod_server:paced_app(200, 50)`."""
    signal.signal(signal.SIGUSR2, _dump_run_info)
    return create_app(paced_source(pieces, interval_ms), heartbeat_s=heartbeat_s)


def _dump_run_info(signum: int, frame: object) -> None:
    """SIGUSR2 in a worker: write what every thread (and, under gevent, every greenlet) is doing to the
    log, so a test that sees a worker linger at shutdown can say where it is stuck."""
    sys.stderr.write(f"[worker {os.getpid()} run info]\n")
    if "gevent" in sys.modules:
        from gevent.util import format_run_info

        sys.stderr.write("\n".join(format_run_info()) + "\n")
    else:
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
    sys.stderr.flush()


class ProdServer:
    """`python -m kit serve --prod --port 0 ARGS...` in its own process group; `url` once it answers."""

    def __init__(self, *args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "kit", "serve", "--prod", "--host", "127.0.0.1", "--port", "0", *args]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            errors="replace",  # a stray byte must not end the log reader: gunicorn would then block on a full pipe
            start_new_session=True,
        )
        self.log: list[str] = []
        self.port = 0
        self.worker_pids: list[int] = []
        self._workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 2  # the CLI default
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # drained to the end, so gunicorn never blocks on a full pipe
            self.log.append(line.rstrip())
            if match := _LISTENING.search(line):
                self.port = int(match.group(1))
                self._ready.set()
            if match := _BOOTED.search(line):
                self.worker_pids.append(int(match.group(1)))
        self._ready.set()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not self._ready.wait(timeout_s) or not self.port:
            raise RuntimeError("gunicorn did not start:\n" + "\n".join(self.log[-30:]))
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                # Every worker booted: memory figures and load spread cover them all.
                booted = len(self.worker_pids) >= self._workers
                if booted and httpx.get(self.url + "healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("gunicorn never answered /healthz:\n" + "\n".join(self.log[-30:]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def rss_bytes(self) -> int:
        """Resident memory of the master and its workers."""
        return sum(rss_bytes(pid) for pid in [self.process.pid, *self.worker_pids])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0, dump_after_s: float = 5.0) -> float:
        """Send `sig` to the master and wait for the whole process group to end; returns the seconds taken.

        Workers still running after `dump_after_s` are asked (SIGUSR2, for apps from this module) to log
        what they are doing: `log_tail()` then shows where they hang.
        """
        started = time.monotonic()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
            try:
                try:
                    self.process.wait(min(dump_after_s, timeout_s))
                except subprocess.TimeoutExpired:
                    self._ask_workers_for_run_info()
                    self.process.wait(max(timeout_s - (time.monotonic() - started), 0.0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return time.monotonic() - started

    def _ask_workers_for_run_info(self) -> None:
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log[-lines:])

    def __enter__(self) -> ProdServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def metrics_app(max_tokens: int = 12, long_tokens: int = 400) -> Flask:
    """gunicorn factory for the metrics test: the embedded model (two small slots per worker), with metrics on.

    The user's text picks the reply: "busy" is refused with a 503, "fail" fails after its first text, "long" is
    a reply long enough for a client to stop it; anything else is a short reply.
    """
    from kit import LlamaSource, ServiceBusy

    # One llama.cpp thread per worker: four workers share the machine's cores.
    options = {
        "n_ctx": 512,
        "slots": 2,
        "n_threads": 1,
        "host_cache_mb": 0,
        "temperature": 0.0,
        "seed": 1,
        "max_queue": 64,
    }
    short, long = LlamaSource(max_tokens=max_tokens, **options), LlamaSource(max_tokens=long_tokens, **options)

    def source(messages: list[dict[str, object]], cancel: CancelToken) -> Iterator[object]:
        text = str(messages[-1].get("text"))
        if text == "busy":
            raise ServiceBusy("The model is busy (a scripted refusal).")
        items = (long if text == "long" else short)(messages, cancel)
        return _fail_after_text(items) if text == "fail" else iter(items)

    return create_app(source, metrics=True, thread_store=False)


def _fail_after_text(items: Iterator[object]) -> Iterator[object]:
    for item in items:
        yield item
        if isinstance(item, dict) and item["choices"] and item["choices"][0]["delta"].get("content"):
            raise RuntimeError("a scripted failure after the first text")
