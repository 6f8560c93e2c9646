"""Branches of a thread (issue 27): what a chat request asks to change (regenerate an answer, edit an earlier
user message), the context the source starts in, and the shape of a message's versions in the messages route.

The web side reads the request (`branch_request`), starts the source inside `branch_scope`, and a source that
keeps its own threads (a checkpointed graph) reads `current_branch()` to fork; transcripts keep a tree of
messages in the thread store. Both show the same JSON: every message has an `id`; the first message of a turn
that has other versions has `versions` = {"index": 1-based, "count": n, "ids": [the versions' ids, oldest first]}.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kit.errors import ChatError
from kit.pipeline.scopes import value_scope

Action = Literal["regenerate", "edit"]
ACTIONS: tuple[Action, ...] = ("regenerate", "edit")
BRANCH_FIELD = "kit"  # the chat request body's field: {"messages": [...], "kit": {"regenerate": "<answer id>"}}
MAX_MESSAGE_ID = 128


class BadBranch(ChatError):
    """A branch request that names no message of this thread, or the wrong kind of message (a 4xx)."""

    status = 400


class NoSuchMessage(ChatError):
    """A message id the thread (on its current branch) does not have."""

    status = 404


@dataclass(frozen=True)
class BranchRequest:
    """What a chat request asks of its thread besides a new turn.

    - `regenerate`: `message_id` is an answer of the current branch; the source gets the branch up to the user
      message before it, and the new answer becomes another version of that answer.
    - `edit`: `message_id` is a user message of the current branch; the source gets the branch before it and
      then `text` (the request's last user message), which becomes another version of that user message.
    """

    action: Action
    message_id: str
    text: str = ""


def branch_request(body: Mapping[str, Any], last_user_text: str) -> BranchRequest | None:
    """The request's branch field, checked (BadBranch, a 400, saying what is wrong); None for a plain turn.

    >>> branch_request({"messages": []}, "Hi") is None
    True
    >>> branch_request({"kit": {"edit": "m12"}}, "Hi again")
    BranchRequest(action='edit', message_id='m12', text='Hi again')
    >>> branch_request({"kit": {"delete": "m12"}}, "")
    Traceback (most recent call last):
    kit.threads.branching.BadBranch: 'kit' must be {"regenerate": "<answer id>"} or {"edit": "<user message id>"}
    """
    field = body.get(BRANCH_FIELD)
    if field is None:
        return None
    asked = [action for action in ACTIONS if isinstance(field, dict) and action in field]
    if not isinstance(field, dict) or len(asked) != 1 or len(field) != 1:
        raise BadBranch(
            f'\'{BRANCH_FIELD}\' must be {{"regenerate": "<answer id>"}} or {{"edit": "<user message id>"}}'
        )
    message_id = field[asked[0]]
    if not isinstance(message_id, str) or not message_id or len(message_id) > MAX_MESSAGE_ID:
        raise BadBranch(f"'{BRANCH_FIELD}.{asked[0]}' must be a message id (a short string)")
    return BranchRequest(asked[0], message_id, last_user_text if asked[0] == "edit" else "")


_current: contextvars.ContextVar[BranchRequest | None] = contextvars.ContextVar("kit_branch", default=None)


def branch_scope(request: BranchRequest | None) -> contextlib.AbstractContextManager[None]:
    """Start the source inside this: a checkpointed graph reads the branch request with `current_branch()`."""
    return value_scope(_current, request)


def current_branch() -> BranchRequest | None:
    """The branch request of the run being started (None: a plain new turn)."""
    return _current.get()
