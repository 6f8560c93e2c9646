"""A context variable set for one block: how a request's values reach the models and sources called inside it
(context variables follow LangChain into its executor threads and asyncio tasks, and the pump into its thread)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def value_scope(variable: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """`variable` holds `value` inside the block, and what it held before after it.

    >>> level = contextvars.ContextVar("level", default=0)
    >>> with value_scope(level, 1):
    ...     level.get()
    1
    >>> level.get()
    0
    """
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)
