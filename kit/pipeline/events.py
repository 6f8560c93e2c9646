"""The typed events of a reply: what the pipeline yields, what the transcript, the observers and a run's event log
read, and what the web edge frames as SSE last of all (kit.pipeline.sse)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EndReason = Literal["finished", "failed", "client_gone"]


@dataclass(frozen=True, slots=True)
class TextEvent:
    """A piece of reply text; `role` is set on the first piece of a new bubble (Deep Chat opens one for it)."""

    id: int
    text: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatEvent:
    """A silence kept alive; `id` is the id of the last event before it (a heartbeat is never replayed)."""

    id: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The reply failed; nothing follows but the end."""

    id: int
    message: str


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """The token usage the source reported (`input_tokens`, `output_tokens`, ...): a finished reply's last event."""

    id: int
    usage: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndEvent:
    """The reply is over, and why."""

    id: int
    reason: EndReason


Event = TextEvent | HeartbeatEvent | ErrorEvent | UsageEvent | EndEvent
"""Anything a reply yields."""


def to_record(event: Event) -> dict[str, Any]:
    """An event as a small JSON-able dict, for a run's event log (`from_record` reads it back).

    >>> to_record(TextEvent(3, "Hi", "ai")), from_record(3, to_record(TextEvent(3, "Hi", "ai")))
    ({'text': 'Hi', 'role': 'ai'}, TextEvent(id=3, text='Hi', role='ai'))
    """
    if isinstance(event, TextEvent):
        return {"text": event.text} if event.role is None else {"text": event.text, "role": event.role}
    if isinstance(event, ErrorEvent):
        return {"error": event.message}
    if isinstance(event, UsageEvent):
        return {"usage": event.usage}
    if isinstance(event, EndEvent):
        return {"end": event.reason}
    return {}


def from_record(event_id: int, record: dict[str, Any]) -> Event:
    """The event a log record stands for (see `to_record`)."""
    if "text" in record:
        return TextEvent(event_id, str(record["text"]), record.get("role"))
    if "error" in record:
        return ErrorEvent(event_id, str(record["error"]))
    if "usage" in record:
        return UsageEvent(event_id, dict(record["usage"]))
    if "end" in record:
        return EndEvent(event_id, record["end"])
    return HeartbeatEvent(event_id)
