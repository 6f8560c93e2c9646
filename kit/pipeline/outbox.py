"""A hand-off queue whose reader can sleep through a coalescing window, woken early only by an item that may not
wait: one wake-up per window instead of one per token for the thread that joins a fast stream's text."""

from __future__ import annotations

import contextlib
import math
import queue
import time
from collections.abc import Callable
from typing import Any


def _never_held(item: Any) -> bool:
    return False


class Outbox:
    """A `queue.SimpleQueue` (put, get) that also lets its reader `doze`: sleep until a timeout or until an item
    arrives that `held` says no to (an end, an error: what should go at once). Items `held` says yes to (text that
    can wait to be joined) are queued without waking a dozing reader.

    >>> box = Outbox(held=lambda item: item != "end")
    >>> box.put("a"); box.put("b")
    >>> box.collect(0.01)  # nothing urgent came: the whole timeout passes
    ['a', 'b']
    >>> box.put("c"); box.put("end"); box.collect(60)  # at once
    ['c', 'end']
    """

    def __init__(self, held: Callable[[Any], bool] = _never_held) -> None:
        self.held = held
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # One mark per urgent item put, after the item (SimpleQueue's get with a timeout is one C-level wait).
        self._urgent: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._wake_after = math.inf  # from then on any item put wakes the reader (set while it collects)

    def put(self, item: Any) -> None:
        self._items.put(item)
        if not self.held(item) or time.monotonic() >= self._wake_after:
            self._urgent.put(None)

    def get(self, timeout: float | None = None) -> Any:
        """The next item, waiting up to `timeout` seconds (queue.Empty when none came)."""
        return self._items.get(timeout=timeout)

    def collect(self, timeout: float, wake_after: float = math.inf) -> list[Any]:
        """Everything queued within `timeout` seconds, or sooner once an urgent item is among it or, from the
        time `wake_after` (time.monotonic), once any item is put: a reader joining text for a window is woken by
        the first token after the window's end, when the producer (the engine's scheduler, between two decodes)
        puts it, rather than by a timer in the middle of a decode.

        An urgent item's mark is put after the item: marks left from items already taken go first, then what is
        queued is taken, so an urgent item put after that wakes the wait and one put before it is in hand."""
        self._wake_after = wake_after
        try:
            while True:
                try:
                    self._urgent.get_nowait()
                except queue.Empty:
                    break
            items = self._drain()
            if all(self.held(item) for item in items) and not (items and time.monotonic() >= wake_after):
                with contextlib.suppress(queue.Empty):
                    self._urgent.get(timeout=max(timeout, 0.0))
                items += self._drain()
            return items
        finally:
            self._wake_after = math.inf

    def _drain(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items
