"""Serve the kit under gunicorn: several worker processes, each with threads or gevent.

`python -m kit serve --prod` runs `gunicorn_command(...)`; the same command can be written by hand::

    gunicorn --config python:kit.serving.production --worker-class gthread --threads 32 --workers 2 \\
        --bind 127.0.0.1:8000 'kit.serving.production:demo_app("word", 40.0)'

This module is also that gunicorn config file: its `post_worker_init` and `worker_int` hooks make a
worker that is told to stop end its open streams at once (each gets a final "restarting" error event)
instead of waiting out long replies; `on_starting`, `child_exit` and `on_exit` give prometheus_client a
directory shared by the workers (PROMETHEUS_MULTIPROC_DIR), so that one scrape of `GET /metrics` counts
every worker. Nothing here imports the app: gevent must patch first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

# "threads" suits the embedded model: llama.cpp releases the GIL while it computes, and gevent cannot
# switch greenlets during a native call. "gevent" suits many long, mostly idle streams (a remote model).
WORKER_CLASSES = {"threads": "gthread", "gevent": "gevent"}

# The demos that run the embedded model: `serve --prod` gives them one engine process beside the workers.
MODEL_DEMOS = ("chain", "agent", "approvals")

# Open streams end at once on stop (see the hooks below), so this only bounds a worker stuck elsewhere.
GRACEFUL_TIMEOUT_S = 10.0


def gunicorn_command(
    app: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    worker_class: str = "threads",
    threads: int = 32,
    connections: int = 1000,
    graceful_timeout_s: float = GRACEFUL_TIMEOUT_S,
) -> list[str]:
    """The gunicorn command line for an app given as `module:variable` or `module:factory(args)`.

    >>> gunicorn_command("kit.serving.production:demo_app()", port=0)[3:9]
    ['--config', 'python:kit.serving.production', '--bind', '127.0.0.1:0', '--workers', '2']
    """
    if worker_class not in WORKER_CLASSES:
        raise ValueError(f"worker_class must be one of {sorted(WORKER_CLASSES)}, not {worker_class!r}")
    if workers < 1 or threads < 1 or connections < 1:
        raise ValueError("workers, threads and connections must be at least 1")
    command = [sys.executable, "-m", "gunicorn", "--config", "python:kit.serving.production"]
    command += ["--bind", f"{host}:{port}", "--workers", str(workers)]
    command += ["--worker-class", WORKER_CLASSES[worker_class]]
    if worker_class == "threads":
        # Each open stream holds one thread for its whole reply: threads x workers streams at once.
        command += ["--threads", str(threads)]
    # gthread also uses this as its cap on open connections (default 1000).
    command += ["--worker-connections", str(connections)]
    command += ["--graceful-timeout", f"{graceful_timeout_s:g}", "--log-level", "info", app]
    return command


def run(command: Sequence[str]) -> None:
    """Replace this process with gunicorn, so that signals (Ctrl-C, SIGTERM) reach its master directly."""
    os.execv(command[0], list(command))


def demo_app(demo: str = "word", delay_ms: float = 40.0) -> Flask:
    """The app factory behind `serve --prod --demo NAME` (gunicorn calls it in each worker), with `GET /metrics`."""
    from kit.serving.demo import build_demo_app

    return build_demo_app(demo, delay_ms, metrics=True)


# ---------------------------------------------------------------------------------------------------
# gunicorn settings and hooks: gunicorn reads these names from this module when started with
# `--config python:kit.serving.production`. Nothing else here may carry a gunicorn setting's name.

# gunicorn >= 25.1 opens a control socket at one fixed path in the home directory, so two servers on one
# machine (two kits, a test next to a dev server) fight over it. Older versions ignore this name.
control_socket_disable = True


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_made_dirs: list[str] = []


def on_starting(server: Any) -> None:
    """gunicorn hook, in the master before any worker: a fresh directory for the workers' metric files, unless
    PROMETHEUS_MULTIPROC_DIR names one already (then it is yours to empty between runs)."""
    if not os.environ.get(MULTIPROC_ENV):
        directory = tempfile.mkdtemp(prefix="kit-prometheus-")
        os.environ[MULTIPROC_ENV] = directory  # the workers inherit it, before they import prometheus_client
        _made_dirs.append(directory)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: a worker that ended no longer counts in the live gauges (active streams, queue depth)."""
    if os.environ.get(MULTIPROC_ENV) and importlib.util.find_spec("prometheus_client") is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """gunicorn hook: the metric files' directory made by `on_starting` goes with the server."""
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def _end_streams() -> None:
    from kit.pipeline.cancel import end_open_streams

    count = end_open_streams()
    if count:
        log.info("worker %s stopping: ended %d open streams", os.getpid(), count)


def _end_streams_from_signal_handler() -> None:
    # Under gevent every greenlet shares this thread, and one may hold a lock the streams need, so the
    # work goes to a new greenlet; under threads the handler's thread holds none of those locks.
    if "gevent" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            import gevent

            gevent.spawn(_end_streams)
            return
    _end_streams()


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: on SIGTERM (a graceful stop, a restart), end open streams before the worker drains."""
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        _end_streams_from_signal_handler()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, stop)


def worker_int(worker: Any) -> None:
    """gunicorn hook: on SIGINT or SIGQUIT (Ctrl-C, a fast stop), end open streams before the worker exits."""
    _end_streams_from_signal_handler()
