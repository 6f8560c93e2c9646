"""Graphs compiled with a checkpointer: each run on the request's thread, fed only the new user message (the
checkpoint holds the rest), and the thread's visible messages read back from the checkpoint for a reload.

Without a thread id from the client the run gets a thread of its own, fed the whole history and deleted after,
so such a graph still answers a stateless client. Graphs without a checkpointer run as before.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel

from kit.adapters.inputs import InputMapper, user_bubble
from kit.pipeline.sources import Message
from kit.threads.ids import current_thread_id
from kit.threads.store import down_on_error
from kit.threads.transcript import Bubbles, new_user_messages

Feed = Callable[[BaseMessage, dict[str, Any]], Iterable[tuple[str, str]]]
"""A StepSelector's `feed`: a message (and its metadata) to (role, text) pieces."""


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
        """The whole history on a new thread; on a thread the checkpoint already holds, the new user turn only."""
        if not keeps_messages(self.graph):
            return to_input(messages)
        with checkpoint_errors():
            started = self.saver.get_tuple(self.config) is not None
        if not started:
            return to_input(messages)
        return {"messages": [HumanMessage(content=m["text"]) for m in new_user_messages(messages)]}

    def around(self, stream: Iterator[Any]) -> Iterator[Any]:
        """The run's stream; a thread made for this request is deleted when it ends."""
        try:
            yield from stream
        finally:
            if self.saver is not None and self.own_thread is not None:
                with contextlib.suppress(NotImplementedError):
                    self.saver.delete_thread(self.own_thread)


def checkpoint_errors() -> contextlib.AbstractContextManager[None]:
    """A checkpointer that fails to read (its database is down) is a 503 for the client, the cause in the log
    (any error: each checkpointer has its own database driver)."""
    return down_on_error("the graph's checkpointer", (Exception,))


WAITING_ROLE = "approval"
WAITING_TEXT = "Waiting for your decision."
"""The bubble a reply ends with when the graph stopped at an interrupt: the page shows the decision to make."""


def checkpoint_messages(graph: Pregel, thread_id: str, feed: Feed) -> list[Message]:
    """The thread's messages as Deep Chat bubbles, laid out as they streamed: the user's, the answers, and (when
    `feed` gives them a role) tool calls and results in steps bubbles. [] for a thread never seen."""
    with checkpoint_errors():
        state = graph.get_state({"configurable": {"thread_id": thread_id}})
    bubbles: list[Message] = []
    reply = Bubbles()
    for message in (state.values or {}).get("messages", []) if isinstance(state.values, dict) else []:
        if isinstance(message, HumanMessage):
            bubbles += reply.messages()
            reply = Bubbles()
            bubbles.append(user_bubble(message.content))  # its files too (issue 28)
            continue
        for role, text in feed(message, {}):
            reply.add(text, role)
    if state.interrupts:  # as the reply that stopped ended: a reload shows the same bubble above the cards
        reply.add(WAITING_TEXT, WAITING_ROLE)
    return bubbles + reply.messages()
