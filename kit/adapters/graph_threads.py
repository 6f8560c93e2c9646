"""Graphs compiled with a checkpointer: each run on the request's thread, fed only the new user message (the
checkpoint holds the rest), and the thread's visible messages read back from the checkpoint for a reload.

Without a thread id from the client the run gets a thread of its own, fed the whole history and deleted after,
so such a graph still answers a stateless client. Graphs without a checkpointer run as before.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel

from kit.adapters.inputs import InputMapper
from kit.pipeline.sources import Message
from kit.threads.ids import current_thread_id
from kit.threads.store import down_on_error
from kit.threads.transcript import new_user_messages


def checkpointer_of(graph: Pregel) -> BaseCheckpointSaver | None:
    """The saver the graph was compiled with (None: no memory; a subgraph's `True` inherits its parent's)."""
    saver = getattr(graph, "checkpointer", None)
    return saver if isinstance(saver, BaseCheckpointSaver) else None


def keeps_messages(graph: Pregel) -> bool:
    """A checkpointed graph whose state has a `messages` channel: the kit can feed it turns and read them back."""
    return checkpointer_of(graph) is not None and "messages" in graph.channels


class GraphRun:
    """One run of a graph: its config (with `thread_id` when checkpointed) and its input."""

    def __init__(self, graph: Pregel, config: RunnableConfig | None) -> None:
        self.graph = graph
        self.saver = checkpointer_of(graph)
        self.config: RunnableConfig | None = config
        self.own_thread: str | None = None  # a thread made for this request alone, deleted after
        if self.saver is not None:
            thread_id = current_thread_id()
            if thread_id is None:
                thread_id = self.own_thread = f"kit-request-{uuid.uuid4().hex}"
            configurable = {**(config or {}).get("configurable", {}), "thread_id": thread_id}
            self.config = {**(config or {}), "configurable": configurable}

    def input(self, messages: list[Message], to_input: InputMapper) -> Any:
        """The whole history on a new thread; on a thread the checkpoint already holds, the new user turn only.
        Every HumanMessage gets an id (issue 27: the page addresses each message by it)."""
        if not keeps_messages(self.graph):
            return to_input(messages)
        with checkpoint_errors():
            started = self.saver.get_tuple(self.config) is not None
        if not started:
            return with_ids(to_input(messages))
        return {"messages": self.new_turn(messages)}

    def new_turn(self, messages: list[Message]) -> list[HumanMessage]:
        """The request's new user messages (after the last reply) as HumanMessages with ids of their own."""
        return [HumanMessage(content=m["text"], id=new_message_id()) for m in new_user_messages(messages)]

    @property
    def thread_id(self) -> str | None:
        return (self.config or {}).get("configurable", {}).get("thread_id") if self.saver is not None else None

    def around(self, stream: Iterator[Any]) -> Iterator[Any]:
        """The run's stream; a thread made for this request is deleted when it ends."""
        try:
            yield from stream
        finally:
            if self.saver is not None and self.own_thread is not None:
                with contextlib.suppress(NotImplementedError):
                    self.saver.delete_thread(self.own_thread)


def with_ids(value: Any) -> Any:
    """A graph's input with an id on each HumanMessage that has none (a whole history fed to a new thread)."""
    for message in value.get("messages", []) if isinstance(value, dict) else []:
        if isinstance(message, HumanMessage) and not message.id:
            message.id = new_message_id()
    return value


def new_message_id() -> str:
    """The id the kit gives a HumanMessage it feeds a graph.

    >>> len(new_message_id())
    32
    """
    return uuid.uuid4().hex


def checkpoint_errors() -> contextlib.AbstractContextManager[None]:
    """A checkpointer that fails to read (its database is down) is a 503 for the client, the cause in the log
    (any error: each checkpointer has its own database driver)."""
    return down_on_error("the graph's checkpointer", (Exception,))


WAITING_ROLE = "approval"
WAITING_TEXT = "Waiting for your decision."
"""The bubble a reply ends with when the graph stopped at an interrupt: the page shows the decision to make."""
