"""The id a reply's root run gets in a tracer (LangSmith), chosen by the web side before the source starts, so
that feedback on that answer can name the run later (issue 27). A LangChain source passes it as its config's
`run_id` (kit.adapters.runnables); the transcript keeps it with the reply's bubbles."""

from __future__ import annotations

import contextlib
import contextvars

from kit.pipeline.scopes import value_scope

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("kit_reply_run", default=None)


def reply_run_scope(run_id: str | None) -> contextlib.AbstractContextManager[None]:
    """Start the source inside this: its root run is to get this id (None: the tracer picks one).

    >>> with reply_run_scope("0b5f9e9e-6f2a-4c39-9d0e-3f1f0c8a1d2e"):
    ...     reply_run_id()
    '0b5f9e9e-6f2a-4c39-9d0e-3f1f0c8a1d2e'
    """
    return value_scope(_current, run_id)


def reply_run_id() -> str | None:
    """The root run id the reply being started should have (None: none chosen)."""
    return _current.get()
