"""Scripted fake sources: deterministic stand-ins for a model, for tests, demos and fault injection."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from kit.pipeline.cancel import CancelToken
from kit.pipeline.sources import Message


class ScriptedFailure(RuntimeError):
    """Raised by a ScriptedSource at its scripted failure point."""


@dataclass
class ScriptedSource:
    """Yields fixed pieces with a fixed delay, optionally going silent or raising part-way.

    It waits on the cancel token instead of sleeping, so a cancelled stream stops at once, and it
    records how its runs ended so tests can prove cancellation reached it.

    >>> list(ScriptedSource(["a", "b"])([{"role": "user", "text": "hi"}], cancel=CancelToken()))
    ['a', 'b']
    """

    pieces: Sequence[str]
    delay_s: float = 0.0
    silence_before_s: float = 0.0
    fail_after: int | None = None
    started: int = 0
    cancelled: int = 0
    completed: int = 0
    closed: int = 0
    received: list[list[Message]] = field(default_factory=list)  # the messages of each run, as it got them

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[str]:
        self.started += 1
        self.received.append(messages)
        return self._run(cancel)

    def _run(self, cancel: CancelToken) -> Iterator[str]:
        completed = False
        try:
            if self.silence_before_s and cancel.wait(self.silence_before_s):
                return
            start = time.monotonic()
            for index, piece in enumerate(self.pieces):
                if self.fail_after is not None and index == self.fail_after:
                    raise ScriptedFailure(f"scripted failure after {index} pieces")
                # An absolute schedule: sleep overheads do not add up, so the rate is the one asked for.
                wait = start + index * self.delay_s - time.monotonic()
                if wait > 0 and cancel.wait(wait):
                    return
                yield piece
            self.completed += 1
            completed = True
        finally:
            # A cancel ends the run in a wait, or while a piece is being handed on (the pump then closes the
            # generator at its `yield`): both are a cancelled run.
            self.cancelled += not completed and cancel.cancelled
            self.closed += 1


class EchoSource:
    """Answers each run with its number and the last message's text, recording what every run received: the
    answers tell the runs apart (a regenerated answer differs from the first).

    >>> source = EchoSource()
    >>> list(source([{"role": "user", "text": "hi"}], CancelToken())), source.received
    (['answer 1', ' to hi'], [[{'role': 'user', 'text': 'hi'}]])
    """

    def __init__(self) -> None:
        self.received: list[list[Message]] = []

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[str]:
        self.received.append([dict(message) for message in messages])  # type: ignore[misc]
        return iter([f"answer {len(self.received)}", f" to {messages[-1].get('text', '')}"])
