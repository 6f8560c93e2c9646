"""HTTP servers in child processes on loopback (llama-cpp-python's OpenAI-compatible server, JupyterLab):
started, waited for until they answer, and stopped, also when the parent exits."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx  # noqa: F401  # the doctest below uses it

from kit.serving.ports import free_port, wait_until_answering

__all__ = ["ChildServer", "free_port", "start_llama_server", "wait_until_answering"]

_lock = threading.Lock()
_children: set[ChildServer] = set()


class ChildServer:
    """A server started as `command` at `url`, ready once `url + ready_path` answers 200. Its output goes
    to `log_path` (kept), or to a temporary file removed when it stops.

    >>> port = free_port()
    >>> with ChildServer([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
    ...                  f"http://127.0.0.1:{port}") as child:
    ...     httpx.get(child.url).status_code
    200
    """

    def __init__(
        self,
        command: Sequence[str],
        url: str,
        ready_path: str = "",
        *,
        timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.command = list(command)
        self.url = url
        self.ready_url = url + ready_path
        self._keep_log = log_path is not None
        if log_path is None:
            self._log = tempfile.NamedTemporaryFile(prefix="kit-child-", suffix=".log", delete=False)  # noqa: SIM115
        else:
            self._log = open(log_path, "wb")  # noqa: SIM115  # closed in stop()
        self.log_path = Path(self._log.name)
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=cwd
        )
        with _lock:
            _children.add(self)
        try:
            self._wait_until_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, timeout_s: float) -> None:
        def still_starting() -> None:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.command[0]} exited with {self.process.returncode} before answering: {self.log_tail()}"
                )

        try:
            wait_until_answering(self.ready_url, timeout_s, ok_only=True, check=still_starting)
        except TimeoutError as error:
            raise TimeoutError(f"{error}: {self.log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the child's output, for error messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the child to exit (SIGTERM), kill it if it has not after `timeout_s`; safe to call twice."""
        with _lock:
            _children.discard(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if not self._keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _stop_children() -> None:
    # A notebook kernel that shuts down must not leave a model server running behind it.
    with _lock:
        children = list(_children)
    for child in children:
        child.stop(timeout_s=5.0)


def start_llama_server(
    model_path: str | Path | None = None, port: int = 0, *, n_ctx: int = 2048, timeout_s: float = 120.0
) -> ChildServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (default model: the embedded SmolLM2).

    Its API is at `child.url` (`http://127.0.0.1:PORT/v1`): point `kit.adapters.ready_made.openai_chat_model` at it.
    """
    from kit.model.settings import default_model_path  # the model lookup lives with the model

    port = port or free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path or default_model_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False",
        "--flash_attn", "True",  # as the embedded engine: the same floating point, so the same greedy replies
    ]  # fmt: skip
    return ChildServer(command, f"http://127.0.0.1:{port}/v1", "/models", timeout_s=timeout_s)
