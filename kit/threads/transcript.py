"""Transcripts: a reply's bubbles as Deep Chat showed them, and the sources that keep their own thread instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from kit.pipeline.sources import ANSWER_ROLE, Message


@runtime_checkable
class ThreadMemory(Protocol):
    """A source that may keep its own conversations (a LangGraph graph compiled with a checkpointer)."""

    @property
    def keeps_threads(self) -> bool:
        """True when the source keeps each thread itself (else the kit keeps a transcript for it)."""
        ...

    def thread_messages(self, thread_id: str) -> list[Message]:
        """The thread's current branch in Deep Chat's format, each with its `id` (and `versions` where a turn has
        several: kit.threads.branching); [] for a thread never seen."""
        ...

    def switch_branch(self, thread_id: str, message_id: str) -> None:
        """Make the branch through this version current (NoSuchMessage when the thread has no such message)."""
        ...


class Bubbles:
    """Collects a reply's text as Deep Chat lays it out: text goes to the current bubble, a new role opens a
    new bubble (the first bubble is the answer's).

    >>> bubbles = Bubbles()
    >>> for role, text in [(None, "Hi"), ("steps", "calling x"), ("steps", " done"), ("ai", "Bye")]:
    ...     bubbles.add(text, role)
    >>> bubbles.messages()
    [{'role': 'ai', 'text': 'Hi'}, {'role': 'steps', 'text': 'calling x done'}, {'role': 'ai', 'text': 'Bye'}]
    """

    def __init__(self) -> None:
        self._bubbles: list[tuple[str, list[str]]] = []  # (role, its pieces): joined once, not per piece
        self.usage: dict[str, object] | None = None  # the reply's token usage (its last event), if any

    def add(self, text: str, role: str | None = None) -> None:
        if not text:
            return
        current = self._bubbles[-1][0] if self._bubbles else ANSWER_ROLE
        role = role or current
        if not self._bubbles or role != current:
            self._bubbles.append((role, [text]))
        else:
            self._bubbles[-1][1].append(text)

    def messages(self) -> list[Message]:
        """The bubbles; the last answer bubble carries the reply's usage in Deep Chat's `custom` field."""
        messages: list[Message] = [{"role": role, "text": "".join(pieces)} for role, pieces in self._bubbles]
        answers = [index for index, message in enumerate(messages) if message["role"] == ANSWER_ROLE]
        if answers:
            messages[answers[-1]] = with_usage(messages[answers[-1]], self.usage)
        return messages


def with_usage(message: Message, usage: Mapping[str, object] | None) -> Message:
    """The answer's bubble with the reply's token usage in Deep Chat's `custom` field (which Deep Chat keeps
    with the message and sends back in the history), when the source reported any.

    >>> with_usage({"text": "Hi"}, {"output_tokens": 1}), with_usage({"text": "Hi"}, {})
    ({'text': 'Hi', 'custom': {'usage': {'output_tokens': 1}}}, {'text': 'Hi'})
    """
    return {**message, "custom": {"usage": dict(usage)}} if usage else message


def new_user_messages(messages: Sequence[Message]) -> list[Message]:
    """The messages a request adds to its thread: the user messages after the last reply.

    >>> new_user_messages([{"role": "user", "text": "a"}, {"role": "ai", "text": "b"}, {"role": "user", "text": "c"}])
    [{'role': 'user', 'text': 'c'}]
    """
    new: list[Message] = []
    for message in reversed(messages):
        if message.get("role") != "user":
            break
        asked: Message = {"role": "user", "text": str(message.get("text", ""))}
        if message.get("files"):
            asked["files"] = message["files"]  # kept with their bytes (kit.threads.files)
        new.insert(0, asked)
    return new
