"""Thread ids: their header, their validation, and the thread the current request runs on."""

from __future__ import annotations

import contextlib
import contextvars
import re
import secrets

from kit.errors import ChatError
from kit.pipeline.scopes import value_scope

THREAD_ID_HEADER = "X-Kit-Thread-Id"
# Long and random (the kit's page draws 128 bits): an id is the only key to a conversation without a login.
_THREAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("kit_thread_id", default=None)


class BadThreadId(ChatError):
    """A thread id that is not 16 to 64 letters, digits, '-' or '_'."""

    status = 400


def validate_thread_id(value: str) -> str:
    """The id itself, or BadThreadId (a 400) saying what an id looks like.

    >>> validate_thread_id("0123456789abcdef")
    '0123456789abcdef'
    >>> validate_thread_id("../etc/passwd")
    Traceback (most recent call last):
    kit.threads.ids.BadThreadId: a thread id (header X-Kit-Thread-Id) is 16 to 64 letters, digits, '-' or '_'
    """
    if not _THREAD_ID.fullmatch(value):
        raise BadThreadId(f"a thread id (header {THREAD_ID_HEADER}) is 16 to 64 letters, digits, '-' or '_'")
    return value


def new_thread_id() -> str:
    """A fresh id with 128 random bits, as the kit's page makes them.

    >>> len(new_thread_id())
    32
    """
    return secrets.token_hex(16)


def thread_scope(thread_id: str | None) -> contextlib.AbstractContextManager[None]:
    """Run the code inside on this thread: a source started here reads it with `current_thread_id()`.

    >>> with thread_scope("0123456789abcdef"):
    ...     current_thread_id()
    '0123456789abcdef'
    >>> current_thread_id() is None
    True
    """
    return value_scope(_current, thread_id)


def current_thread_id() -> str | None:
    """The thread of the request being started (None: the client named none)."""
    return _current.get()
