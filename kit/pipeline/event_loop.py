"""The process's one asyncio loop for async sources: started lazily in a daemon thread, stopped at exit."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Sync code that async sources hand to the loop's executor (LangChain runs a sync model or step there):
# enough workers that requests waiting for a model (in its fair queue) never starve other chains' steps.
EXECUTOR_WORKERS = 64
STOP_TIMEOUT_S = 5.0


class OwnedLoop:
    """An asyncio loop in a daemon thread (an OS thread under gevent's patching too), one per process.

    The WSGI request threads never run a loop of their own: they hand coroutines to this one
    (`loop.call_soon_threadsafe`) and wait on thread-safe queues, so they stay plain threads under werkzeug
    and gunicorn's gthread, and plain greenlets under gevent (where `asyncio.run` in a request still works).
    A loop per request would start and tear down a thread and an executor each time. A process forked after
    the loop started (a gunicorn worker of a preloaded app) gets a loop of its own: the parent's thread does
    not exist there.

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
        self._finished: threading.Event | None = None
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
            return self._finished is not None and not self._finished.is_set() and self._pid == os.getpid()

    def _start(self) -> None:
        native = _gevent_originals()
        if native is None:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(EXECUTOR_WORKERS, thread_name_prefix=f"{self._name}-step")
            )
        else:
            # Under gevent's patching a "thread" is a greenlet, and asyncio keeps its running loop per OS thread:
            # every request greenlet would see the kit's loop as running (`asyncio.run` then refuses to start).
            # So the loop, its selector and its executor use real OS threads, as without gevent.
            start_new_thread, selector, native_queue, native_lock = native
            loop = asyncio.SelectorEventLoop(selector())
            loop.set_default_executor(_NativeWorkers(EXECUTOR_WORKERS, start_new_thread, native_queue, native_lock))
        finished = threading.Event()
        if native is None:
            threading.Thread(target=_run, args=(loop, finished), name=self._name, daemon=True).start()
        else:
            native[0](_run, (loop, finished))
        self._loop, self._finished, self._pid = loop, finished, os.getpid()
        if not self._exit_hook:
            atexit.register(self.stop)
            self._exit_hook = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Cancel the loop's tasks (their `finally` blocks run), close async generators, stop and close the
        loop. Returns False when the loop did not stop within `timeout_s` (a task that ignores cancellation).
        Safe to call more than once; a later `get()` starts a new loop."""
        with self._lock:
            loop, finished = self._loop, self._finished
            mine = self._pid == os.getpid()
            self._loop = self._finished = None
        if loop is None or finished is None or not mine:
            return True
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(_shutdown(loop, timeout_s)))
        except RuntimeError:  # already closed
            return True
        if not finished.wait(timeout_s + 1.0):
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


def _run(loop: asyncio.AbstractEventLoop, finished: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()  # also shuts the default executor down, without waiting for a step still running
        finished.set()


def _gevent_originals() -> tuple[Any, Any, Any, Any] | None:
    """The unpatched thread start, selector, queue and lock when gevent has patched threading, else None."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    return (
        monkey.get_original("_thread", "start_new_thread"),
        monkey.get_original("selectors", "DefaultSelector"),
        monkey.get_original("queue", "SimpleQueue"),
        monkey.get_original("_thread", "allocate_lock"),
    )


class _NativeWorkers(concurrent.futures.ThreadPoolExecutor):  # asyncio accepts no other kind of default executor
    """The loop's executor under gevent: OS threads (a greenlet there would wait for a hub that never runs in the
    loop's thread). Sync steps of async chains and DNS look-ups run here, as in the ThreadPoolExecutor otherwise."""

    def __init__(self, max_workers: int, start_new_thread: Any, native_queue: Any, native_lock: Any) -> None:
        super().__init__(max_workers)  # its own queue and threads stay unused: submit and shutdown are these
        self._jobs = native_queue()
        self._lock = native_lock()
        self._start_new_thread = start_new_thread
        self._max_workers = max_workers
        self._workers = self._idle = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        with self._lock:  # as ThreadPoolExecutor: each job takes an idle worker, else starts one while it may
            start = not self._idle and self._workers < self._max_workers
            if self._idle:
                self._idle -= 1
            elif start:
                self._workers += 1
        if start:
            self._start_new_thread(self._work, ())
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:
                    future.set_exception(error)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            workers = self._workers
        for _ in range(workers):
            self._jobs.put(None)  # each worker ends after the job it is running; none is waited for


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
    """Tasks running on the kit's event loop now (0 if it never started): tests prove none outlives its request.

    >>> pending_tasks() >= 0
    True
    """
    return _owned.pending_tasks()


def stop_owned_loop(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the kit's event loop now (it also stops by itself at exit); the next async source starts a new one.

    >>> loop = owned_loop()
    >>> stop_owned_loop(), loop.is_closed(), owned_loop() is not loop
    (True, True, True)
    """
    return _owned.stop(timeout_s)
