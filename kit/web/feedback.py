"""Feedback on the web side (issue 27): `PUT` and `DELETE threads/<id>/messages/<message id>/feedback`, one vote
per (thread, message, user) with owners applied, the user's votes shown with the thread's messages, and the vote
sent to LangSmith when the app traces there (kit.web.langsmith)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from kit.pipeline.sources import ANSWER_ROLE, Message
from kit.threads.feedback import BadFeedback, FeedbackStore, parse_vote, snapshot
from kit.threads.ids import validate_thread_id
from kit.web.langsmith import send_vote, tracing_on
from kit.web.threads import ChatThreads

FEEDBACK_ROUTE = "/threads/<thread_id>/messages/<message_id>/feedback"


class ChatFeedback:
    """The feedback routes of one mounted chat; its thread's messages carry the current user's votes."""

    def __init__(self, threads: ChatThreads) -> None:
        self.threads = threads
        self.votes = FeedbackStore(threads.store) if threads.store is not None else None
        threads.annotate = self.annotate

    def register_routes(self, target: Flask | Blueprint) -> None:
        target.add_url_rule(FEEDBACK_ROUTE, "feedback_put", self._put, methods=["PUT"])
        target.add_url_rule(FEEDBACK_ROUTE, "feedback_delete", self._delete, methods=["DELETE"])

    def _put(self, thread_id: str, message_id: str) -> Response:
        votes, thread_id = self._checked(thread_id)
        vote, comment = parse_vote(request.get_json(silent=True))
        kept = snapshot(self.threads.branch(thread_id), message_id, vote, comment)
        votes.put(thread_id, message_id, self._user(), kept)
        run_id = self._trace_run(thread_id, message_id)
        if run_id is not None:
            send_vote(run_id, vote, comment)
        return jsonify(vote=vote, comment=comment)

    def _delete(self, thread_id: str, message_id: str) -> Response:
        votes, thread_id = self._checked(thread_id)
        snapshot(self.threads.branch(thread_id), message_id, "up", "")  # 404 / 400 as for a vote
        votes.delete(thread_id, message_id, self._user())
        return jsonify({})

    def _checked(self, thread_id: str) -> tuple[FeedbackStore, str]:
        thread_id = validate_thread_id(thread_id)
        self.threads.check_owner(thread_id)
        if self.votes is None:
            raise BadFeedback("feedback needs a thread store (thread_store is False)")
        return self.votes, thread_id

    def _user(self) -> str:
        return (self.threads.owner() if self.threads.owner is not None else None) or ""

    def _trace_run(self, thread_id: str, message_id: str) -> str | None:
        store = self.threads.store
        if not tracing_on() or store is None:
            return None
        if self.threads.memory is not None:  # a checkpointed graph: noted when its reply ended
            return store.answer_run(thread_id, message_id)
        return store.trace_run(thread_id, int(message_id)) if message_id.isdigit() else None

    def annotate(self, thread_id: str, messages: list[Message]) -> list[Message]:
        """The messages, each answer the current user voted on with its `feedback`."""
        if self.votes is None or not messages:
            return messages
        mine = self.votes.of_thread(thread_id, self._user())
        return [
            {**m, "feedback": mine[m["id"]]} if m.get("id") in mine and m["role"] == ANSWER_ROLE else m
            for m in messages
        ]
