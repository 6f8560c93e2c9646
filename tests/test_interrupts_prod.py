"""Approvals under gunicorn with two worker processes on PostgreSQL: the decision reaches another worker than the
one that stopped, and the same decision sent to both workers at once runs the tool once.

As in tests/test_threads_prod.py, pausing one worker (SIGSTOP) makes the kernel hand every new connection to
the other. The app gunicorn serves is the factory below.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx
import pytest
from flask import Flask, Response

from kit.serving.client import chat_body
from kit.testing.tool_model import ScriptedToolModel
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import PostgresThreadStore
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)
from tests.prod_server import ProdServer
from tests.test_interrupts import email_call, texts
from tests.test_threads_prod import WORKER_HEADER, paused, worker_of

pytestmark = pytest.mark.timeout(180)


def approvals_app(url: str) -> Flask:
    """gunicorn factory: the demo agent on a scripted model, checkpoints and claims in PostgreSQL."""
    from kit.serving.demo import demo_agent_app

    app = demo_agent_app(PostgresThreadStore(url), ScriptedToolModel(tool_call_for=email_call), approvals=True)

    @app.after_request
    def name_the_worker(response: Response) -> Response:
        response.headers[WORKER_HEADER] = str(os.getpid())
        return response

    return app


def ask(url: str, thread_id: str) -> tuple[httpx.Response, dict[str, Any]]:
    """A chat turn that stops for approval; the reply and the pending interrupt."""
    reply = httpx.post(url + "chat-stream", json=chat_body("bob"), headers={THREAD_ID_HEADER: thread_id}, timeout=30)
    (item,) = httpx.get(f"{url}threads/{thread_id}/interrupts", timeout=10).json()
    return reply, item


def approve(url: str, thread_id: str, item: dict[str, Any]) -> httpx.Response:
    body = {"interrupt_id": item["id"], "decisions": [{"type": "approve"}]}
    return httpx.post(url + "chat-stream/resume", json=body, headers={THREAD_ID_HEADER: thread_id}, timeout=30)


def tool_runs(url: str, thread_id: str) -> int:
    bubbles = httpx.get(f"{url}threads/{thread_id}/messages", timeout=10).json()
    return sum(bubble["text"].count("send_email returned") for bubble in bubbles)


def test_the_decision_resumes_on_the_other_worker_once(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    app = f"tests.test_interrupts_prod:approvals_app({postgres_cluster.url!r})"
    with ProdServer("--workers", "2", "--app", app) as server:
        thread_id = new_thread_id()
        reply, item = ask(server.url, thread_id)
        stopped_on = worker_of(reply)
        other = next(pid for pid in server.worker_pids if pid != stopped_on)
        with paused(stopped_on):
            resumed = approve(server.url, thread_id, item)
            assert worker_of(resumed) == other and texts(resumed.text).endswith("Done: Email to bob sent: Lunch")
        with paused(other):
            again = approve(server.url, thread_id, item)
            assert worker_of(again) == stopped_on and again.status_code == 409
        assert tool_runs(server.url, thread_id) == 1

        thread_id = new_thread_id()
        _, item = ask(server.url, thread_id)
        statuses: list[int] = []
        start = threading.Barrier(6)

        def decide() -> None:
            start.wait()
            statuses.append(approve(server.url, thread_id, item).status_code)

        workers = [threading.Thread(target=decide) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(statuses) == [200] + [409] * 5
        assert tool_runs(server.url, thread_id) == 1
