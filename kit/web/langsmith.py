"""Feedback to LangSmith (issue 27): when the app traces to LangSmith (`LANGSMITH_TRACING` or
`LANGCHAIN_TRACING_V2` true, and an API key), each reply's root run gets an id chosen before it starts, and a vote
on that answer is sent as feedback on that run (`key="user_vote"`, score 1 for up, 0 for down)."""

from __future__ import annotations

import logging
import os
import threading
import uuid
import warnings
from typing import Any

log = logging.getLogger(__name__)

FEEDBACK_KEY = "user_vote"
_TRUE = ("true", "1", "yes")
_clients: dict[str | None, Any] = {}  # one per endpoint (a changed endpoint: a test's server)
_client_lock = threading.Lock()


def tracing_on() -> bool:
    """Whether runs go to LangSmith, as LangChain decides it from the environment.

    >>> os.environ.pop("LANGSMITH_TRACING", None); os.environ.pop("LANGCHAIN_TRACING_V2", None); tracing_on()
    False
    """
    flag = os.environ.get("LANGSMITH_TRACING") or os.environ.get("LANGCHAIN_TRACING_V2") or ""
    key = os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")
    return flag.strip().lower() in _TRUE and bool(key)


def new_trace_run() -> str | None:
    """A root run id for the reply about to start when it is traced (None otherwise)."""
    return str(uuid.uuid4()) if tracing_on() else None


def send_vote(run_id: str, vote: str, comment: str) -> bool:
    """The vote as LangSmith feedback on the run; False (and a warning in the log) when it could not be sent:
    the vote is kept in the thread store either way."""
    try:
        client = _langsmith_client()
        with warnings.catch_warnings():
            # langsmith 0.15 warns when feedback names no project (session) id; the kit knows the run, not the
            # project's id, and finding it would cost a request per vote.
            warnings.filterwarnings("ignore", message=".*without session_id.*")
            client.create_feedback(run_id, key=FEEDBACK_KEY, score=1 if vote == "up" else 0, comment=comment or None)
    except Exception as error:  # LangSmith down or refusing: the chat's own feedback is not affected
        log.warning("feedback on run %s could not be sent to LangSmith: %s", run_id, error)
        return False
    return True


def _langsmith_client() -> Any:
    endpoint = os.environ.get("LANGSMITH_ENDPOINT") or os.environ.get("LANGCHAIN_ENDPOINT")
    with _client_lock:
        if endpoint not in _clients:
            from langsmith import Client

            _clients[endpoint] = Client()
        return _clients[endpoint]
