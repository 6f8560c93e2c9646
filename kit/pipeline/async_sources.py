"""Async sources (async generators, coroutine functions, async iterables) as the sync iterators the pump reads.

The source runs as one task on the kit's event loop (`kit.pipeline.event_loop`) and hands its items to the
pump's producer thread through a bounded queue, so everything after it (normalising, heartbeats, coalescing,
errors) is the same as for a sync source. The request's cancel token cancels the task at its next `await`
(its `finally` blocks and `async with` exits run, so an SDK stream closes its connection), and the
iterator's `close()` waits for that cleanup before the producer thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from typing import Any

from kit.errors import ChatError
from kit.pipeline.cancel import CancelToken
from kit.pipeline.event_loop import owned_loop
from kit.pipeline.pump import Failed, Finished, receive

log = logging.getLogger(__name__)

SourceCall = Callable[[list[dict[str, Any]], CancelToken], Any]
"""A source called with the conversation and the cancel token (what kit.pipeline.sources builds)."""

# How long closing the iterator waits for a cancelled task's cleanup (an SDK closing its connection) before
# giving up on it with a warning: only a source that swallows CancelledError takes longer.
CLEANUP_TIMEOUT_S = 10.0
POLL_S = 0.05


class StreamStopped(ChatError):
    """An async source's task was cancelled (Stop, a client that left, the process stopping) before it ended."""


class CoroutineReturned(ChatError, TypeError):
    """A plain function source returned a coroutine: it calls an async API without awaiting it."""


def is_async_function(source: object) -> bool:
    """An `async def` function or generator, or an object whose `__call__` is one.

    >>> async def reply(messages): return "Hi"
    >>> is_async_function(reply), is_async_function(len)
    (True, False)
    """
    if inspect.iscoroutinefunction(source) or inspect.isasyncgenfunction(source):
        return True
    call = getattr(type(source), "__call__", None)  # noqa: B004 (an instance of a class with `async def __call__`)
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def is_async_iterable(value: object) -> bool:
    """Something to read with `async for` and not with `for` (an async generator, an SDK's async stream)."""
    return hasattr(value, "__aiter__") and not hasattr(value, "__iter__")


def with_async(source: object, call: SourceCall) -> SourceCall:
    """What a source becomes, given how to call it: async functions are awaited on the kit's loop, async
    iterables are bridged, and a plain function that returns a coroutine is refused with the fix.

    >>> async def words(messages):
    ...     for word in ("Hello", ", ", "world"):
    ...         yield word
    >>> list(with_async(words, lambda messages, cancel: words(messages))([], CancelToken()))
    ['Hello', ', ', 'world']
    """
    if is_async_iterable(source) and not callable(source):
        if aiter(source) is source:  # type: ignore[arg-type]
            raise TypeError(
                f"source is a {type(source).__qualname__}, an async iterator that can be read only once: pass the "
                "async generator function itself (or an object whose __aiter__ starts a new stream each time)"
            )
        return lambda messages, cancel: iterate(source, cancel)  # type: ignore[arg-type]
    if is_async_function(source):
        return lambda messages, cancel: _awaited(call(messages, cancel), cancel, source)
    return lambda messages, cancel: _checked(call(messages, cancel), cancel, source)


def _awaited(result: Any, cancel: CancelToken, source: object) -> Any:
    # Awaited here, in the request thread, like a plain function's call: an error before the stream (say,
    # ServiceBusy while waiting for a place) still gets its HTTP status.
    value = run(result, cancel) if inspect.isawaitable(result) else result
    return [value] if isinstance(value, str) else _checked(value, cancel, source)


def _checked(result: Any, cancel: CancelToken, source: object) -> Any:
    if inspect.iscoroutine(result):
        result.close()  # never to be awaited: closed now, so Python does not warn that it never was
        name = getattr(source, "__qualname__", type(source).__qualname__)
        message = (
            f"The source {name} returned a coroutine instead of a stream: it calls an async function without "
            "awaiting it. Declare it `async def` and `await` the call (or `async for` over the stream and yield "
            "the pieces); the kit runs async sources on its own event loop."
        )
        log.error(message)
        raise CoroutineReturned(message)
    if is_async_iterable(result):
        return iterate(result, cancel, owned=True)
    return result


class _Task:
    """One coroutine running as a task on the kit's loop, cancellable once from any thread."""

    def __init__(
        self,
        coroutine: Awaitable[Any],
        context: contextvars.Context,
        on_done: Callable[[asyncio.Task[Any]], None] | None = None,
    ) -> None:
        self.done = threading.Event()
        self._task: asyncio.Task[Any] | None = None
        self._on_done = on_done
        try:
            self._loop = owned_loop()
            # The task runs in a copy of `context`: the caller's context variables (a bound cancel token) follow.
            self._loop.call_soon_threadsafe(self._create, coroutine, context=context.copy())
        except BaseException:  # no loop (the interpreter is exiting): the coroutine will never run
            getattr(coroutine, "close", lambda: None)()
            raise

    def _create(self, coroutine: Any) -> None:
        self._task = self._loop.create_task(coroutine)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it again: the caller reads it from `result`
        if self._on_done is not None:
            self._on_done(task)
        self.done.set()

    def result(self) -> Any:
        assert self._task is not None and self.done.is_set()
        return self._task.result()

    def cancel(self) -> None:
        if not self.done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing runs on it any more
                self._loop.call_soon_threadsafe(self._cancel_on_loop)

    def _cancel_on_loop(self) -> None:
        task = self._task
        # Once only: a second cancel would interrupt the cleanup the first one started (an SDK's aclose).
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    def wait_cleanup(self, timeout_s: float) -> None:
        if not self.done.wait(timeout_s):
            log.warning("an async source is still running %.0f s after it was cancelled: does it catch "
                        "CancelledError without re-raising it?", timeout_s)  # fmt: skip


def run(awaitable: Awaitable[Any], cancel: CancelToken) -> Any:
    """Await `awaitable` on the kit's event loop and return its value; the token cancels it.

    >>> import asyncio
    >>> run(asyncio.sleep(0, "done"), CancelToken())
    'done'
    """
    task = _Task(_await(awaitable), contextvars.copy_context())
    forget = cancel.on_cancel(task.cancel)
    try:
        task.done.wait()
    except BaseException:  # KeyboardInterrupt in a notebook: the task must not outlive the wait
        task.cancel()
        raise
    finally:
        forget()
    try:
        return task.result()
    except asyncio.CancelledError:
        return ()  # stopped before the stream began: there is nothing to send


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def iterate(
    stream: AsyncIterable[Any],
    cancel: CancelToken,
    *,
    owned: bool = False,
    context: contextvars.Context | None = None,
    queue_size: int = 256,
) -> Iterator[Any]:
    """Iterate `stream` on the kit's event loop from this sync thread. `owned`: the stream object belongs to
    this request (an SDK's stream returned by the source), so it is closed at the end, not only its iterator.

    >>> async def count():
    ...     for number in range(3):
    ...         yield number
    >>> list(iterate(count(), CancelToken()))
    [0, 1, 2]
    """
    handoff = _Handoff(queue_size)
    context = context if context is not None else contextvars.copy_context()
    task = _Task(_drain(stream, handoff, owned), context, on_done=handoff.ended)
    forget = cancel.on_cancel(task.cancel)
    try:
        for item in receive(handoff.items, cancel, POLL_S):
            handoff.taken()
            yield item
    finally:
        forget()
        task.cancel()  # the consumer left early (an error downstream, the pump closing us): the source stops
        task.wait_cleanup(CLEANUP_TIMEOUT_S)


class _Handoff:
    """The bounded queue between the source's task and the consumer thread. A full queue (a client reading
    slowly) makes the task wait without holding the loop, which runs every other stream too, and the consumer
    wakes it as soon as it takes an item (polling instead capped a fast source at a queue per poll)."""

    def __init__(self, size: int) -> None:
        self.items: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._waiting = False  # the task waits for room: the consumer's next take wakes it
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ended(self, task: asyncio.Task[Any]) -> None:
        """The task ended. A cancelled one put no ending of its own: the reader learns of it now, not at its
        next poll, so the producer thread ends with the source."""
        if task.cancelled():
            with contextlib.suppress(queue.Full):  # a full queue: the reader's poll sees the cancelled token
                self.items.put_nowait(Failed(StreamStopped("The reply was stopped before it finished.")))

    def taken(self) -> None:
        """Called by the consumer thread after each item it takes."""
        if self._waiting and self._loop is not None and self._room is not None:
            self._waiting = False
            with contextlib.suppress(RuntimeError):  # the loop closed with the interpreter
                self._loop.call_soon_threadsafe(self._room.set)

    async def put(self, item: Any) -> None:
        """Called by the task; returns once the item is queued, however long the consumer takes."""
        while True:
            try:
                self.items.put_nowait(item)
                return
            except queue.Full:
                pass
            if self._room is None:
                self._room, self._loop = asyncio.Event(), asyncio.get_running_loop()
            self._room.clear()
            self._waiting = True
            try:  # the consumer may have taken an item before it could see the flag: try once more
                self.items.put_nowait(item)
                self._waiting = False
                return
            except queue.Full:
                await self._room.wait()  # cancelled here too, when Stop comes while the queue is full


async def _drain(stream: AsyncIterable[Any], handoff: _Handoff, owned: bool) -> None:
    iterator = aiter(stream)
    ending: Finished | Failed = Finished()
    try:
        try:
            async for item in iterator:
                await handoff.put(item)
        finally:
            await _close(iterator, stream if owned else None)
    except Exception as error:  # the same in-band error as a sync source's; the traceback goes with it
        ending = Failed(error)
    await handoff.put(ending)


async def _close(iterator: Any, stream: Any) -> None:
    """Close what the source opened: its iterator (an async generator's `finally`), and the stream object
    itself when it is one-shot (an SDK's `AsyncStream`, whose `close()` releases the connection)."""
    for target in dict.fromkeys(filter(None, (iterator, stream))):
        closer = getattr(target, "aclose", None) or getattr(target, "close", None)
        if closer is not None and inspect.iscoroutinefunction(closer):
            await closer()
