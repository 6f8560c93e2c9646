"""Merge pieces that arrive faster than a time window into one event, in order, losing nothing."""

from __future__ import annotations

import contextlib
import contextvars

from kit.pipeline.scopes import value_scope

DEFAULT_COALESCE_MS = 16.0  # StreamSettings.coalesce_ms's default: one event per display frame
# A piece within this share of the window of its end goes now: a source that joins text in windows of its own (the
# engine) hands each group over as its window ends, a thread hand-off's jitter before this one's may end.
LATE_SHARE = 1 / 8


class Coalescer:
    """A throttle for text: at most one event per window, the first piece after a quiet spell at once.

    The caller owns the clock: it passes `now` in and asks for `deadline()` to know when to call
    `flush()` if no new piece arrives. A window of 0 turns coalescing off (one event per piece).

    >>> c = Coalescer(window_s=0.05, max_chars=100)
    >>> c.add("a", now=1.0), c.add("b", now=1.01), c.add("c", now=1.02), c.deadline()
    ('a', None, None, 1.05)
    >>> c.flush()
    'bc'
    """

    def __init__(self, window_s: float, max_chars: int) -> None:
        if window_s < 0:
            raise ValueError(f"the coalescing window must be 0 or more seconds, not {window_s}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, not {max_chars}")
        self.window_s = window_s
        self._late_s = window_s * LATE_SHARE
        self.max_chars = max_chars
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush = float("-inf")

    def add(self, piece: str, now: float) -> str | None:
        """Buffer a piece; return the text of an event if one is due now."""
        self._pending.append(piece)
        self._pending_chars += len(piece)
        if self._pending_chars >= self.max_chars or now >= self._last_flush + self.window_s - self._late_s:
            self._last_flush = now
            return self.flush()
        return None

    def deadline(self) -> float | None:
        """The time by which the buffered text must go out, or None when nothing is buffered."""
        return self._last_flush + self.window_s if self._pending else None

    def flush(self, now: float | None = None) -> str | None:
        """Return all buffered text as one event (None when empty) and start a new window."""
        if now is not None:
            self._last_flush = now
        if not self._pending:
            return None
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        return text


# The window of the reply being served, for a source whose server can join its pieces before they reach the
# pipeline (the engine process, asked by RemoteEngine): context variables follow the source into the pump's thread.
_current_window: contextvars.ContextVar[float | None] = contextvars.ContextVar("kit_coalesce_s", default=None)


def coalescing_window(window_s: float) -> contextlib.AbstractContextManager[None]:
    """Make `window_s` the coalescing window that sources called inside this block see.

    >>> with coalescing_window(0.016):
    ...     current_window_s()
    0.016
    >>> current_window_s() is None
    True
    """
    return value_scope(_current_window, window_s)


def current_window_s() -> float | None:
    """The coalescing window of the reply being served (None outside one)."""
    return _current_window.get()
