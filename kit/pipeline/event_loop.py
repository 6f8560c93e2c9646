"""The process's one asyncio loop for async sources: started lazily in a daemon thread, stopped at exit."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading

log = logging.getLogger(__name__)

# Sync code that async sources hand to the loop's executor (LangChain runs a sync model or step there):
# enough workers that requests waiting for a model (in its fair queue) never starve other chains' steps.
EXECUTOR_WORKERS = 64
STOP_TIMEOUT_S = 5.0


class OwnedLoop:
    """An asyncio loop in a daemon thread (a greenlet under gevent's patching), one per process.

    The WSGI request threads never run a loop of their own: they hand coroutines to this one
    (`loop.call_soon_threadsafe`) and wait on thread-safe queues, so they stay plain threads under werkzeug
    and gunicorn's gthread, and plain greenlets under gevent. A loop per request would start and tear down
    a thread and an executor each time. A process forked after the loop started (a gunicorn worker of a
    preloaded app) gets a loop of its own: the parent's thread does not exist there.

    >>> owned = OwnedLoop()
    >>> import asyncio
    >>> asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "ran"), owned.get()).result(5)
    'ran'
    >>> owned.stop()
    True
    """

    def __init__(self, name: str = "kit-event-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._exit_hook = False

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._start()
            assert self._loop is not None
            return self._loop

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        workers = concurrent.futures.ThreadPoolExecutor(EXECUTOR_WORKERS, thread_name_prefix=f"{self._name}-step")
        loop.set_default_executor(workers)
        thread = threading.Thread(target=_run, args=(loop,), name=self._name, daemon=True)
        thread.start()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()
        if not self._exit_hook:
            atexit.register(self.stop)
            self._exit_hook = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Cancel the loop's tasks (their `finally` blocks run), close async generators, stop and close the
        loop. Returns False when the loop did not stop within `timeout_s` (a task that ignores cancellation).
        Safe to call more than once; a later `get()` starts a new loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            mine = self._pid == os.getpid()
            self._loop = self._thread = None
        if loop is None or thread is None or not mine:
            return True
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(_shutdown(loop, timeout_s)))
        except RuntimeError:  # already closed
            return True
        thread.join(timeout_s + 1.0)
        if thread.is_alive():
            log.warning("the kit's event loop did not stop within %.0f s: a task ignores cancellation", timeout_s)
            return False
        return True

    def pending_tasks(self, timeout_s: float = 5.0) -> int:
        """How many tasks run on the loop now (0 when it is not started): tests use it to prove none leaked."""
        with self._lock:
            loop = self._loop if self._pid == os.getpid() else None
        if loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(_count_tasks(), loop).result(timeout_s)


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()  # also shuts the default executor down, without waiting for a step still running


async def _shutdown(loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
    try:
        tasks = [task for task in asyncio.all_tasks(loop) if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        await asyncio.wait_for(loop.shutdown_asyncgens(), timeout_s)
    except Exception:  # a stuck generator must not keep the process from exiting
        log.exception("stopping the kit's event loop")
    finally:
        loop.stop()


async def _count_tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # not this one


_owned = OwnedLoop()


def owned_loop() -> asyncio.AbstractEventLoop:
    """The process's kit event loop, started on first use; every async source and LangChain event stream runs on it.

    >>> import asyncio
    >>> asyncio.run_coroutine_threadsafe(asyncio.sleep(0, 42), owned_loop()).result(5)
    42
    """
    return _owned.get()


def pending_tasks() -> int:
    """Tasks running on the kit's event loop now (0 if it never started)."""
    return _owned.pending_tasks()


def stop_owned_loop(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the kit's event loop now (it also stops by itself at exit); the next async source starts a new one."""
    return _owned.stop(timeout_s)
