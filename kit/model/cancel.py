"""The cancel token of the request being served, seen by models deep inside a chain."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from kit.pipeline.pump import CancelToken

# The cancel token of the request being served, so that a model deep inside a LangChain chain can stop
# when the client leaves. Context variables follow LangChain into its executor threads.
_current_cancel: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("kit_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(cancel: CancelToken) -> Iterator[None]:
    """Make `cancel` the token that models called inside this block obey."""
    reset = _current_cancel.set(cancel)
    try:
        yield
    finally:
        _current_cancel.reset(reset)


def bind_cancel(cancel: CancelToken) -> None:
    """Make `cancel` the token for the rest of the current context (run it in a copied context)."""
    _current_cancel.set(cancel)


def current_cancel() -> CancelToken | None:
    """The token set by the innermost `cancel_scope`, if any."""
    return _current_cancel.get()


def bound_context(cancel: CancelToken) -> contextvars.Context:
    """A copy of the current context in which `cancel` is the token: run a chain in it (`context.run`), or
    hand it to an asyncio task, and the models inside obey the token.

    >>> token = CancelToken()
    >>> bound_context(token).run(current_cancel) is token
    True
    """
    context = contextvars.copy_context()
    context.run(bind_cancel, cancel)
    return context
