"""Hooks that watch streams as they are served (the notebook inspector, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from kit.pipeline.events import EndReason

WriteKind = Literal["text", "heartbeat", "error"]
__all__ = ["EndReason", "ObserverFactory", "StreamObserver", "WriteKind"]


class StreamObserver:
    """Receives what one stream does; override what you need. Times are time.perf_counter() values.

    Called from the thread that serves the response, so keep each call short.
    """

    def piece(self, chars: int, at: float) -> None:
        """A piece arrived from the source (after granularity, before coalescing)."""

    def role(self, name: str, at: float) -> None:
        """The pieces after this one are of role `name`: "ai" (the answer), "thinking" (a reasoning model's,
        reported whether the `thinking` option shows, hides or inlines it), or another bubble's ("steps")."""

    def write(self, kind: WriteKind, nbytes: int, at: float) -> None:
        """Bytes went to the client: an event or a heartbeat (reported by the web edge, which frames them)."""

    def end(self, reason: EndReason, at: float) -> None:
        """The stream is over."""


ObserverFactory = Callable[[list[dict[str, object]]], StreamObserver]
"""Called once per streamed request with its messages; returns the observer for that stream."""
