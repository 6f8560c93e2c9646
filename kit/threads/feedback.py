"""Feedback on answers (issue 27): one vote per (thread, message, user) in the thread store's `kit_feedback`
table, kept with a snapshot of the question, the answer and the branch, so that an export needs nothing else.

A table of the thread store's database, over its connections (kit.threads.store); the web side is
kit.web.feedback, the export `python -m kit feedback export` (kit.serving.feedback_export).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kit.errors import ChatError
from kit.pipeline.sources import ANSWER_ROLE, Message
from kit.threads.branching import NoSuchMessage

if TYPE_CHECKING:  # the store creates this module's table, so it imports this module
    from kit.threads.store import ThreadStore

VOTES = ("up", "down")
MAX_COMMENT = 4_000
COLUMNS = ("thread_id", "message_id", "user", "vote", "comment", "question", "answer", "branch", "created", "updated")


def feedback_schema(real: str) -> tuple[str, ...]:
    """The table, in a dialect's type for timestamps."""
    return (
        "CREATE TABLE IF NOT EXISTS kit_feedback (thread_id TEXT NOT NULL, message_id TEXT NOT NULL, "
        "user_id TEXT NOT NULL, vote TEXT NOT NULL, comment TEXT NOT NULL, question TEXT NOT NULL, "
        f"answer TEXT NOT NULL, branch TEXT NOT NULL, created {real} NOT NULL, updated {real} NOT NULL, "
        "PRIMARY KEY (thread_id, message_id, user_id))",
    )


class BadFeedback(ChatError):
    """A vote that is not "up" or "down", a comment too long, or a vote on a user message: a 400."""

    status = 400


@dataclass(frozen=True)
class Vote:
    """A user's vote on one answer, and what it was about when it was cast."""

    vote: str
    comment: str = ""
    question: str = ""
    answer: str = ""
    branch: list[str] = field(default_factory=list)


def parse_vote(body: Any) -> tuple[str, str]:
    """The vote and comment of a PUT body (BadFeedback saying what is wrong).

    >>> parse_vote({"vote": "up"}), parse_vote({"vote": "down", "comment": "wrong year"})
    (('up', ''), ('down', 'wrong year'))
    """
    if not isinstance(body, Mapping) or body.get("vote") not in VOTES:
        raise BadFeedback('the body must be {"vote": "up" | "down", "comment": "optional text"}')
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise BadFeedback(f"'comment' must be a text of at most {MAX_COMMENT:,} characters")
    return str(body["vote"]), comment


def snapshot(branch: Sequence[Message], message_id: str, vote: str, comment: str) -> Vote:
    """The vote with its answer, the question before it and the branch's ids up to it (NoSuchMessage for an id
    the current branch does not have, BadFeedback for a user message).

    >>> branch = [{"id": "1", "role": "user", "text": "Hi?"}, {"id": "2", "role": "ai", "text": "Hello"}]
    >>> snapshot(branch, "2", "up", "")
    Vote(vote='up', comment='', question='Hi?', answer='Hello', branch=['1', '2'])
    """
    index = next((i for i, message in enumerate(branch) if message.get("id") == message_id), None)
    if index is None:
        raise NoSuchMessage(f"this thread has no message {message_id!r} on its current branch")
    if branch[index]["role"] != ANSWER_ROLE:
        raise BadFeedback("feedback is for answers only")
    asked = [m for m in branch[:index] if m["role"] == "user"]
    question = str(asked[-1].get("text", "")) if asked else ""
    ids = [str(m.get("id")) for m in branch[: index + 1]]
    return Vote(vote, comment, question, str(branch[index].get("text", "")), ids)


class FeedbackStore:
    """The votes of one thread store.

    >>> import os, tempfile
    >>> from kit.threads.store import SqliteThreadStore
    >>> votes = FeedbackStore(SqliteThreadStore(os.path.join(tempfile.mkdtemp(), "t.sqlite")))
    >>> votes.put("thread-0123456789", "2", "", Vote("up")); votes.of_thread("thread-0123456789", "")
    {'2': {'vote': 'up', 'comment': ''}}
    """

    def __init__(self, store: ThreadStore) -> None:
        self.store = store

    def put(self, thread_id: str, message_id: str, user: str, vote: Vote) -> None:
        """Keep the user's vote on this message, replacing the one before (its first time stays `created`)."""
        now = time.time()
        sql = (
            "INSERT INTO kit_feedback (thread_id, message_id, user_id, vote, comment, question, answer, branch, "
            "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id, message_id, user_id) "
            "DO UPDATE SET vote = excluded.vote, comment = excluded.comment, question = excluded.question, "
            "answer = excluded.answer, branch = excluded.branch, updated = excluded.updated"
        )
        branch = json.dumps(vote.branch)
        row = (thread_id, message_id, user, vote.vote, vote.comment, vote.question, vote.answer, branch, now, now)
        self.store._execute_many(sql, [row])

    def delete(self, thread_id: str, message_id: str, user: str) -> None:
        """Remove the user's vote on this message (none: nothing to do)."""
        sql = "DELETE FROM kit_feedback WHERE thread_id = ? AND message_id = ? AND user_id = ?"
        self.store._execute_many(sql, [(thread_id, message_id, user)])

    def of_thread(self, thread_id: str, user: str) -> dict[str, dict[str, str]]:
        """The user's votes on this thread's messages, by message id."""
        sql = "SELECT message_id, vote, comment FROM kit_feedback WHERE thread_id = ? AND user_id = ?"
        rows = self.store._query(sql, (thread_id, user))
        return {row["message_id"]: {"vote": row["vote"], "comment": row["comment"]} for row in rows}

    def export(self) -> Iterator[dict[str, Any]]:
        """Every vote of the store, oldest first, as the export writes it (COLUMNS)."""
        sql = (
            "SELECT thread_id, message_id, user_id, vote, comment, question, answer, branch, created, updated "
            "FROM kit_feedback ORDER BY created, thread_id, message_id, user_id"
        )
        for row in self.store._query(sql, ()):
            found = {**dict(row), "user": row["user_id"], "branch": json.loads(row["branch"])}
            yield {key: found[key] for key in COLUMNS}
