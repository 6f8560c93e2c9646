"""Errors a source may raise to choose what the client sees, and with which HTTP status."""

from __future__ import annotations


class ChatError(Exception):
    """An error whose message is safe to show in Deep Chat.

    Raised while the source is being called (before the first byte) it becomes an HTTP `status` with a
    JSON `{"error": message}` body; raised later it becomes one in-band error event.
    """

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ServiceBusy(ChatError):
    """Too many requests are waiting for the model: 503, try again later."""

    status = 503
