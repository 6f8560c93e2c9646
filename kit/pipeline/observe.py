"""Hooks that watch streams as they are served (the notebook inspector, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from flask import Flask

WriteKind = Literal["text", "heartbeat", "error"]
EndReason = Literal["finished", "failed", "client_gone"]


class StreamObserver:
    """Receives what one stream does; override what you need. Times are time.perf_counter() values.

    Called from the thread that serves the response, so keep each call short.
    """

    def piece(self, chars: int, at: float) -> None:
        """A piece arrived from the source (after granularity, before coalescing)."""

    def write(self, kind: WriteKind, nbytes: int, at: float) -> None:
        """Bytes went to the client: an event or a heartbeat."""

    def end(self, reason: EndReason, at: float) -> None:
        """The stream is over."""


ObserverFactory = Callable[[list[dict[str, object]]], StreamObserver]
"""Called once per streamed request with its messages; returns the observer for that stream."""

_EXTENSION = "kit.observers"


def add_observer(app: Flask, factory: ObserverFactory) -> Callable[[], None]:
    """Watch every stream the app serves from now on; returns a function that stops watching."""
    factories: list[ObserverFactory] = app.extensions.setdefault(_EXTENSION, [])
    factories.append(factory)
    return lambda: factories.remove(factory) if factory in factories else None


def observers_for(app: Flask, messages: list[dict[str, object]]) -> list[StreamObserver]:
    """One observer per registered factory, for a stream that starts now."""
    return [factory(messages) for factory in app.extensions.get(_EXTENSION, [])]
