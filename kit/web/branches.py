"""Branches on the web side (issue 27): a chat request that regenerates an answer or edits an earlier user message
is checked against the thread's current branch before any source starts (404 for an unknown id, 400 for the
wrong kind of message, nothing changed), the source of a transcript gets exactly that branch, and
`POST threads/<id>/switch` makes another version's branch current.

For a transcript the new version becomes the current branch in the run's claim (one commit, taken only when the
thread is free: kit.web.runs); a source with its own memory (a checkpointed graph) forks itself, reading
`current_branch()`, and switches with `switch_branch`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from kit.pipeline.files import read_again
from kit.pipeline.sources import Message
from kit.threads.branching import BadBranch, BranchRequest, NoSuchMessage
from kit.threads.ids import validate_thread_id
from kit.threads.runs import Then
from kit.threads.store import ThreadStore
from kit.threads.tree import ROOT
from kit.web.runs import REPLY_IN_PROGRESS, ReplyInProgress, ThreadRuns
from kit.web.threads import ChatThreads, Turn

SWITCH_ROUTE = "/threads/<thread_id>/switch"
NO_THREAD = "regenerate and edit need a thread: send the X-Kit-Thread-Id header"


@dataclass
class BranchPlan:
    """What a branch request runs: the source's messages, the reply's new user messages, the head's move."""

    messages: list[Message]
    asked: list[Message]
    move: Then | None = None


def branch_point(branch: Sequence[Message], asked: BranchRequest) -> int:
    """How many messages of the current branch come before the new version (NoSuchMessage, BadBranch).

    >>> branch = [{"id": "1", "role": "user"}, {"id": "2", "role": "ai"}, {"id": "3", "role": "steps"}]
    >>> branch_point(branch, BranchRequest("regenerate", "3")), branch_point(branch, BranchRequest("edit", "1"))
    (1, 0)
    """
    index = next((i for i, message in enumerate(branch) if message.get("id") == asked.message_id), None)
    if index is None:
        raise NoSuchMessage(f"this thread has no message {asked.message_id!r} on its current branch")
    is_user = branch[index]["role"] == "user"
    if asked.action == "edit":
        if not is_user:
            raise BadBranch("only a user message can be edited; regenerate an answer instead")
        return index
    if is_user:
        raise BadBranch("only an answer can be regenerated; edit a user message instead")
    while index > 0 and branch[index - 1]["role"] != "user":
        index -= 1  # back to the reply's first bubble: a reply is regenerated whole
    if index == 0:
        raise BadBranch("this answer has no question before it to answer again")
    return index


class ChatBranches:
    """Branch requests and the switch route of one mounted chat."""

    def __init__(self, threads: ChatThreads, runs: ThreadRuns) -> None:
        self.threads = threads
        self.runs = runs

    def register_routes(self, target: Flask | Blueprint) -> None:
        target.add_url_rule(SWITCH_ROUTE, "thread_switch", self._switch_route, methods=["POST"])

    def plan(self, turn: Turn, asked: BranchRequest | None, messages: list[Message]) -> BranchPlan | None:
        """The checked plan of a branch request (None for a plain turn); the turn carries it to the source."""
        if asked is None:
            return None
        if turn.thread_id is None:
            raise BadBranch(NO_THREAD)
        turn.branch = asked
        if self.threads.memory is not None:  # the graph forks from its checkpoint itself
            branch_point(self.threads.memory.thread_messages(turn.thread_id), asked)
            return BranchPlan(messages, turn.asked)
        store = self.threads.store
        if store is None:
            raise BadBranch("regenerate and edit need a thread store (thread_store is False)")
        branch = turn.kept if turn.kept is not None else store.messages(turn.thread_id)
        point = branch_point(branch, asked)
        edited = [_for_source(store, turn.thread_id, messages[-1])] if asked.action == "edit" else []
        before = [_for_source(store, turn.thread_id, message) for message in branch[:point]]
        leaf = int(branch[point - 1]["id"]) if point else ROOT
        turn.restore = int(branch[-1]["id"])
        thread_id = turn.thread_id
        turn.asked = [{k: v for k, v in m.items() if k in ("role", "text", "files")} for m in edited]
        return BranchPlan([*before, *edited], turn.asked, lambda c: store.set_head_on(c, thread_id, leaf))

    def _switch_route(self, thread_id: str) -> Response:
        thread_id = validate_thread_id(thread_id)
        self.threads.check_owner(thread_id)
        body: Any = request.get_json(silent=True)
        message_id = body.get("message_id") if isinstance(body, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise BadBranch('the body must be {"message_id": "<id of a version>"}')
        self.switch(thread_id, message_id)
        return jsonify(self.threads.messages(thread_id))

    def switch(self, thread_id: str, message_id: str) -> None:
        """Make the branch through this version current, holding the thread as a run would (409 while one runs)."""
        run_id = secrets.token_hex(16)
        claims, store = self.runs.claims, self.threads.store
        if self.threads.memory is not None:
            if not claims.claim(thread_id, run_id):
                raise ReplyInProgress(REPLY_IN_PROGRESS)
            try:
                self.threads.memory.switch_branch(thread_id, message_id)
            finally:
                claims.release(thread_id, run_id)
            return
        unknown = NoSuchMessage(f"this thread has no message {message_id!r}")
        if store is None or not message_id.isdigit():
            raise unknown

        def move(connection: Any) -> None:
            # Claimed, moved and freed in one commit; an unknown id rolls the claim back with it.
            if not store.switch_on(connection, thread_id, int(message_id)):
                raise unknown
            claims.release_on(connection, thread_id, run_id)

        if not claims.claim(thread_id, run_id, move):
            raise ReplyInProgress(REPLY_IN_PROGRESS)


def _for_source(store: ThreadStore, thread_id: str, message: Message) -> Message:
    """A message as a source gets it: its id, role, text, and its files with their content (read again from the
    store)."""
    shown: Message = {"role": message["role"], "text": message.get("text", "")}
    if message.get("id"):
        shown["id"] = message["id"]  # the id the page and the messages route show for it (an edit has none yet)
    files = []
    for listing in message.get("files") or []:
        if listing.get("content") is not None or "sha256" not in listing:
            files.append(listing)  # the request's own file, read already
            continue
        found = store.file(thread_id, listing["sha256"])
        if found is not None:
            files.append(read_again(*found))
    if files:
        shown["files"] = files
    return shown
