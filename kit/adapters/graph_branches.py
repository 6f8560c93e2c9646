"""A checkpointed graph's thread as a tree of versions (issue 27): every checkpoint LangGraph keeps is a point of
it, the latest checkpoint is the current branch, and a fork or a switch writes a copy of an earlier checkpoint as
the new latest one (LangGraph's own fork: `update_state(config, None, as_node="__copy__")`).

So the old branches stay in the checkpointer, every worker sees the same current branch, and the kit keeps no
table of its own for a graph's branches. The versions of position k of the current branch are the distinct
message ids found at position k among the checkpoints whose messages before k are the current branch's, oldest
first.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel

from kit.adapters.graph_threads import WAITING_ROLE, WAITING_TEXT, checkpoint_errors, checkpointer_of
from kit.adapters.inputs import user_bubble
from kit.pipeline.sources import ANSWER_ROLE, Message
from kit.threads.branching import BadBranch, BranchRequest, NoSuchMessage
from kit.threads.transcript import Bubbles

Feed = Callable[[BaseMessage, dict[str, Any]], Iterable[tuple[str, str]]]
"""A StepSelector's `feed`: a message (and its metadata) to (role, text) pieces."""

COPY = "__copy__"  # update_state's node name for "copy this checkpoint as the newest, same parent"
INTERRUPT = "__interrupt__"  # the pending write LangGraph keeps for an interrupt() a run stopped at


def message_id(message: BaseMessage, position: int) -> str:
    """A message's id in the checkpoint (LangGraph's add_messages gives every message one; a state whose
    reducer does not gets its position, stable on one branch only)."""
    return message.id or f"position-{position}"


@dataclass(frozen=True)
class Point:
    """One checkpoint of the thread's root graph: its config, its messages and their ids, whether it has tasks to
    run (`pending`: e.g. right after a user message was added, before the model ran) or an interrupt waiting."""

    config: RunnableConfig
    messages: tuple[BaseMessage, ...]
    ids: tuple[str, ...]
    pending: bool
    interrupted: bool


def _point(saved: Any, triggers: dict[str, list[str]]) -> Point | None:
    """A checkpoint tuple as a Point; None for a subgraph's checkpoint or a state without a messages list."""
    if saved.config["configurable"].get("checkpoint_ns", ""):
        return None
    messages = saved.checkpoint.get("channel_values", {}).get("messages", [])
    if not isinstance(messages, list):
        return None  # a DeltaChannel's sentinel: its value is rebuilt from its history (not read here)
    ids = tuple(message_id(message, index) for index, message in enumerate(messages))
    interrupted = any(write[1] == INTERRUPT for write in saved.pending_writes or ())
    return Point(saved.config, tuple(messages), ids, _has_tasks(saved.checkpoint, triggers), interrupted)


def _has_tasks(checkpoint: Any, triggers: dict[str, list[str]]) -> bool:
    """LangGraph's rule for the next step: some node has a trigger channel updated since that node last ran."""
    versions = checkpoint.get("channel_versions", {})
    seen = checkpoint.get("versions_seen", {})
    for node, channels in triggers.items():
        node_seen = seen.get(node, {})
        for channel in channels:
            if channel in versions and (channel not in node_seen or versions[channel] > node_seen[channel]):
                return True
    return False


class SeenPoints:
    """Each thread's points read so far, per checkpointer, so that a read deserialises only the checkpoints written
    since (most of a read's time is spent rebuilding messages). Sound because a checkpoint's content never changes
    and only the thread's newest one still gains pending writes (a run writes to the checkpoint it runs from): the
    newest seen is read again every time. A cache only: the checkpointer stays the one state every worker reads."""

    def __init__(self, threads: int = 64) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._by_saver: weakref.WeakKeyDictionary[Any, OrderedDict[str, list[Point]]] = weakref.WeakKeyDictionary()

    def points(self, saver: Any, thread_id: str, read: Callable[[Any], Point | None]) -> list[Point]:
        """The thread's root checkpoints as points, oldest first: those seen before, then those read now."""
        with self._lock:
            known = list(self._by_saver.setdefault(saver, OrderedDict()).get(thread_id, []))
        newest = known[-1].config["configurable"]["checkpoint_id"] if known else None
        fresh, reached = [], False
        with (
            checkpoint_errors(),
            contextlib.closing(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})) as listed,
        ):
            for saved in listed:  # newest first
                if newest is not None and saved.config["configurable"]["checkpoint_id"] < newest:
                    reached = True  # older than what was seen: known already
                    break
                fresh.append(saved)
        read_now = [point for point in map(read, reversed(fresh)) if point is not None]
        points = (known[:-1] if reached else []) + read_now  # not reached: the thread was deleted meanwhile
        with self._lock:
            threads = self._by_saver.setdefault(saver, OrderedDict())
            threads[thread_id] = [replace(point, messages=()) for point in points[:-1]] + points[-1:]
            threads.move_to_end(thread_id)
            while len(threads) > self.threads:
                threads.popitem(last=False)
        return points


_SEEN = SeenPoints()


class Tree:
    """The thread's checkpoints, oldest first (one read of the checkpointer); the latest is the current branch."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.points = list(points)

    @classmethod
    def load(cls, graph: Pregel, thread_id: str) -> Tree:
        saver = checkpointer_of(graph)
        if saver is None:
            return cls([])
        triggers = {name: list(node.triggers) for name, node in graph.nodes.items()}
        return cls(_SEEN.points(saver, thread_id, lambda saved: _point(saved, triggers)))

    @property
    def current(self) -> Point | None:
        return self.points[-1] if self.points else None

    def versions(self) -> list[list[str]]:
        """For each position of the current branch, the ids found there on a branch with the same messages
        before it, oldest first (one id: no other version)."""
        current = self.current.ids if self.current else ()
        found: list[dict[str, None]] = [{} for _ in current]
        for point in self.points:
            for index, (mine, theirs) in enumerate(zip(point.ids, current, strict=False)):
                found[index].setdefault(mine)
                if mine != theirs:
                    break  # past here this checkpoint is on another branch
        return [list(ids) for ids in found]

    def position(self, wanted: str) -> int:
        """Where the message is on the current branch (NoSuchMessage: not on it)."""
        ids = self.current.ids if self.current else ()
        for candidate in (wanted, wanted.rsplit("#", 1)[0]):  # a second bubble of one message: "<id>#2"
            if candidate in ids:
                return ids.index(candidate)
        raise NoSuchMessage(f"this thread has no message {wanted!r} on its current branch")

    def holding(self, ids: tuple[str, ...], *, pending: bool) -> Point | None:
        """A checkpoint whose messages are exactly these: with tasks to run (the oldest, as the run left it right
        after the last message was added) or without (the newest: a finished turn)."""
        matches = [point for point in self.points if point.ids == ids]
        if pending:
            waiting = [point for point in matches if point.pending and not point.interrupted]
            return waiting[0] if waiting else None
        settled = [point for point in matches if not point.pending]
        return (settled or matches or [None])[-1]

    def newest_through(self, wanted: str) -> Point:
        """The newest checkpoint whose messages include this one: its branch and the newest continuation below it."""
        for candidate in (wanted, wanted.rsplit("#", 1)[0]):
            for point in reversed(self.points):
                if candidate in point.ids:
                    return point
        raise NoSuchMessage(f"this thread has no message {wanted!r}")


def copy_as_latest(graph: Pregel, point: Point) -> None:
    """Write a copy of that checkpoint as the thread's newest: its state becomes the current branch."""
    with checkpoint_errors():
        graph.update_state(point.config, None, as_node=COPY)


def fork(graph: Pregel, thread_id: str, request: BranchRequest, edited: HumanMessage | None) -> Any:
    """Make the branch a regenerate or an edit starts from the thread's latest checkpoint, and give the run's
    input: the edited message after the messages before the one edited, or (regenerate) nothing, the graph going
    on from right after the user message before that answer. BadBranch/NoSuchMessage before anything changed.
    """
    tree = Tree.load(graph, thread_id)
    position = tree.position(request.message_id)
    current = tree.current
    assert current is not None  # position() found the message on it
    is_user = isinstance(current.messages[position], HumanMessage)
    if request.action == "edit":
        if not is_user:
            raise BadBranch("only a user message can be edited; regenerate an answer instead")
        if edited is None:
            raise BadBranch("an edit carries the edited text as the request's last user message")
        copy_as_latest(graph, _before(tree, current.ids[:position]))
        return {"messages": [edited]}
    if is_user:
        raise BadBranch("only an answer can be regenerated; edit a user message instead")
    users = [index for index in range(position) if isinstance(current.messages[index], HumanMessage)]
    if not users:
        raise BadBranch("this answer follows no user message: there is nothing to regenerate it from")
    asked = users[-1]
    after = tree.holding(current.ids[: asked + 1], pending=True)
    if after is not None:  # as the run left it before the model ran: going on from there re-runs the turn
        copy_as_latest(graph, after)
        return None
    # No such checkpoint (the state was written by update_state): the same user message again, same id.
    copy_as_latest(graph, _before(tree, current.ids[:asked]))
    return {"messages": [current.messages[asked]]}


def _before(tree: Tree, ids: tuple[str, ...]) -> Point:
    point = tree.holding(ids, pending=False)
    if point is None:
        raise BadBranch("the checkpointer no longer holds the state before that message")
    return point


def switch(graph: Pregel, thread_id: str, wanted: str) -> None:
    """Make the branch through this version current: a copy of the newest checkpoint through it becomes the latest
    (nothing is written when it already is). A branch that was waiting on an interrupt waits again: the copy has
    no pending writes, so the waiting node runs once more up to its `interrupt()` (no model runs)."""
    tree = Tree.load(graph, thread_id)
    point = tree.newest_through(wanted)
    if point is tree.current:
        return
    copy_as_latest(graph, point)
    if point.interrupted:
        with checkpoint_errors():
            graph.invoke(None, {"configurable": {"thread_id": thread_id}})


def branch_messages(graph: Pregel, thread_id: str, feed: Feed) -> list[Message]:
    """The thread's current branch as Deep Chat bubbles, laid out as they streamed (the user's, the answers, and,
    when `feed` gives them a role, tool calls and results in steps bubbles), each with its `id` (the first
    message it shows) and, on a user message or a reply's first answer bubble that has other versions,
    `versions` (kit.threads.branching). [] for a thread never seen."""
    tree = Tree.load(graph, thread_id)
    if tree.current is None:
        return []
    with checkpoint_errors():  # the interrupts the branch waits on, as LangGraph reads them
        interrupts = graph.get_state({"configurable": {"thread_id": thread_id}}).interrupts
    layout = Layout(tree.versions(), tree.current.ids)
    for position, message in enumerate(tree.current.messages):
        layout.add(position, tree.current.ids[position], message, feed)
    if interrupts:  # as the reply that stopped ended: a reload shows the same bubble above the cards
        layout.reply.add(WAITING_TEXT, WAITING_ROLE)
        layout.reply_ids.append(f"interrupt-{interrupts[0].id}")
    return layout.messages()


class Layout:
    """Bubbles with their ids: a user message is a bubble; a reply's messages go through `feed` into Bubbles,
    and each bubble takes the id of the message that opened it."""

    def __init__(self, versions: list[list[str]], ids: tuple[str, ...]) -> None:
        self.versions = versions
        self.ids = ids  # the current branch's message ids
        self.bubbles: list[Message] = []
        self.reply = Bubbles()
        self.reply_ids: list[str] = []
        self.reply_start: int | None = None  # the position of the reply's first message

    def add(self, position: int, message_id: str, message: BaseMessage, feed: Feed) -> None:
        if isinstance(message, HumanMessage):
            self.bubbles += self._reply()
            self.bubbles.append(self._versioned({**user_bubble(message.content), "id": message_id}, position))
            return
        if self.reply_start is None:
            self.reply_start = position
        before = len(self.reply.messages())
        for role, text in feed(message, {}):
            self.reply.add(text, role)
        opened = len(self.reply.messages()) - before
        self.reply_ids += [message_id if n == 0 else f"{message_id}#{n + 1}" for n in range(opened)]

    def _versioned(self, bubble: Message, position: int) -> Message:
        ids = self.versions[position]
        if len(ids) < 2:
            return bubble
        return {**bubble, "versions": {"index": ids.index(self.ids[position]) + 1, "count": len(ids), "ids": ids}}

    def _reply(self) -> list[Message]:
        bubbles = [{**bubble, "id": id_} for bubble, id_ in zip(self.reply.messages(), self.reply_ids, strict=True)]
        if bubbles and self.reply_start is not None:
            answers = [index for index, bubble in enumerate(bubbles) if bubble["role"] == ANSWER_ROLE] or [0]
            bubbles[answers[0]] = self._versioned(bubbles[answers[0]], self.reply_start)
        self.reply, self.reply_ids, self.reply_start = Bubbles(), [], None
        return bubbles

    def messages(self) -> list[Message]:
        return self.bubbles + self._reply()
