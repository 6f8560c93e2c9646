"""`kit serve --prod` with the model in an engine process of its own, beside the gunicorn workers.

The launcher starts `python -m kit engine` on a loopback port, waits until it answers, then runs gunicorn with
`KIT_ENGINE_URL` pointing every worker at it (so `ChatLlama` and `LlamaSource` stream from it instead of loading
a model each). It supervises the engine: when the engine dies, the streams it held end with an error (in their
web workers), and it is started again on the same port, where the workers' next requests find it. Signals sent
to the launcher go to gunicorn; when gunicorn exits, the engine is stopped and the launcher exits with its code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from kit.model.settings import ENGINE_URL_ENV
from kit.serving.ports import free_port, wait_until_answering

__all__ = ["ENGINE_URL_ENV", "SupervisedEngine", "engine_command", "run_with_engine"]

log = logging.getLogger(__name__)

RESTART_DELAY_S = 0.5  # between an engine's death and its restart: a crash loop must not spin the CPU
READY_TIMEOUT_S = 120.0  # loading the model: seconds on a loaded machine
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU)


def engine_command(port: int, host: str = "127.0.0.1", extra: Sequence[str] = ()) -> list[str]:
    """The engine process's command line.

    >>> engine_command(8001)[1:]
    ['-m', 'kit', 'engine', '--host', '127.0.0.1', '--port', '8001']
    """
    return [sys.executable, "-m", "kit", "engine", "--host", host, "--port", str(port), *extra]


class SupervisedEngine:
    """`python -m kit engine` on a fixed port, started again whenever it exits, until `stop()`."""

    def __init__(self, extra: Sequence[str] = (), host: str = "127.0.0.1", port: int = 0) -> None:
        self.port = port or free_port(host)
        self.command = engine_command(self.port, host, extra)
        self.url = f"http://{host}:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.ready = False
        self.failed: int | None = None  # its exit code, when it exited before it ever answered
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="kit-engine-supervisor", daemon=True)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the engine and wait until it answers `/health`."""
        self._thread.start()
        self._started.wait()
        wait_until_answering(self.url.removesuffix("/v1") + "/health", timeout_s, ok_only=True, check=self._alive)
        self.ready = True

    def _alive(self) -> None:
        if self.failed is not None:
            raise RuntimeError(f"the engine process exited with {self.failed} before answering (see its log above)")
        if self._stopping.is_set():
            raise RuntimeError("the engine process was stopped")

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            # A session of its own: a Ctrl-C in the terminal stops gunicorn, and the launcher stops the engine.
            process = subprocess.Popen(self.command, start_new_session=True)
            self.process = process
            log.info("engine process started with pid: %d at %s", process.pid, self.url)
            self._started.set()
            code = process.wait()
            if self._stopping.is_set():
                return
            if not self.ready:  # it never came up (a missing model, a taken port): restarting would not help
                self.failed = code
                return
            self.restarts += 1
            log.warning("engine process %d exited with %s: restarting it", process.pid, code)
            self._stopping.wait(RESTART_DELAY_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop supervising and end the engine (SIGTERM, then SIGKILL after `timeout_s`)."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def run_with_engine(command: Sequence[str], engine: SupervisedEngine) -> int:
    """Start `engine`, run gunicorn's `command` pointed at it, forward signals; returns gunicorn's exit code."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    try:
        engine.start()
        gunicorn = subprocess.Popen(list(command), env={**os.environ, ENGINE_URL_ENV: engine.url})

        def forward(signum: int, frame: object) -> None:
            if gunicorn.poll() is None:
                gunicorn.send_signal(signum)

        for signum in FORWARDED:
            signal.signal(signum, forward)
        return gunicorn.wait()
    finally:
        engine.stop()
