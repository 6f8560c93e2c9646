"""The one list of source kinds `create_app` accepts beyond plain callables and strings."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kit.pipeline.sources import SourceFn, adapt_plain_source


@dataclass(frozen=True)
class SourceKind:
    """One kind of source object, the library it comes from and the kit module that adapts it.

    The module is imported only when its library is already loaded: a user's object can only come from a
    library the process has imported, so an app of plain functions never pays for LangChain. The module
    offers `recognises(source) -> bool` and `adapt(source) -> SourceFn` (which may raise TypeError with advice).
    """

    name: str
    library: str
    module: str

    def adapter(self) -> tuple[Callable[[object], bool], Callable[[Any], SourceFn]] | None:
        if self.library not in sys.modules:
            return None
        module = importlib.import_module(self.module)
        return module.recognises, module.adapt


# Tried in order, so a specific kind (a LangGraph graph, a legacy Chain: both are Runnables) comes before a
# general one. A new kind of source is one module and one line here.
SOURCE_KINDS: tuple[SourceKind, ...] = (
    SourceKind("LangGraph graph", "langgraph", "kit.adapters.graphs"),
    SourceKind("legacy LangChain Chain (langchain-classic)", "langchain_classic", "kit.adapters.classic"),
    SourceKind("LangChain Runnable or object with .stream()", "langchain_core", "kit.adapters.runnables"),
)


def adapt(source: object) -> SourceFn:
    """Turn what the user passed to `create_app` into a SourceFn, or raise TypeError saying what to pass.

    >>> from kit.pipeline.cancel import CancelToken
    >>> list(adapt("Hi")([{"role": "user", "text": "Hello"}], CancelToken()))
    ['Hi']
    """
    for kind in SOURCE_KINDS:
        found = kind.adapter()
        if found is not None and found[0](source):
            return found[1](source)
    return adapt_plain_source(source, also_accepted=[kind.name for kind in SOURCE_KINDS])
