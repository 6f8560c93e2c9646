"""Hooks that watch streams as they are served (the notebook inspector, metrics, benchmarks) and the engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kit.pipeline.events import EndReason
from kit.pipeline.usage import Usage

WriteKind = Literal["text", "heartbeat", "error", "usage"]
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

    def usage(self, usage: Usage, at: float) -> None:
        """The tokens the source reported for this reply (called just before `end`, and only if it reported)."""

    def end(self, reason: EndReason, at: float) -> None:
        """The stream is over."""


ObserverFactory = Callable[[list[dict[str, object]]], StreamObserver]
"""Called once per streamed request with its messages; returns the observer for that stream."""


@dataclass(frozen=True)
class EngineState:
    """What an embedded model's engine is doing now, and its counts since it started (kit.model.engine)."""

    model: str
    slots: int
    waiting: int  # generations queued for a free slot
    running: int  # generations holding a slot
    prompt_tokens: int  # prompt tokens of the generations started
    reused_tokens: int  # ... whose cells were already there (prefix reuse)
    generated_tokens: int

    @property
    def read_tokens(self) -> int:
        """Prompt tokens the engine had to read (not reused)."""
        return self.prompt_tokens - self.reused_tokens


EngineWatcher = Callable[[int, EngineState], None]
"""Called with an engine's id and its state whenever its queue or slots change (keep it short)."""

ENGINE_WATCHERS: list[EngineWatcher] = []
"""Who watches the process's engines (the Prometheus metrics); empty, an engine's change costs one check."""


def watch_engines(watcher: EngineWatcher) -> Callable[[], None]:
    """Call `watcher` on every change of every engine from now on; returns a function that stops it."""
    ENGINE_WATCHERS.append(watcher)
    return lambda: ENGINE_WATCHERS.remove(watcher) if watcher in ENGINE_WATCHERS else None
