"""Branches and feedback across two gunicorn workers on one PostgreSQL (issue 27): an edit on one worker, the
versions, a switch and a vote on the other, each seen by the next request on either."""

from __future__ import annotations

import httpx
import pytest
from flask import Flask

from kit import create_app
from kit.testing.fakes import EchoSource
from kit.threads.ids import new_thread_id
from kit.threads.store import PostgresThreadStore
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)
from tests.prod_server import ProdServer, named_by_worker
from tests.test_branches_web import plain, send, six_turns
from tests.test_threads_prod import paused, worker_of

pytestmark = pytest.mark.timeout(180)


def branches_app(url: str) -> Flask:
    """gunicorn factory: an EchoSource with its transcripts on PostgreSQL; each response names its worker."""
    return named_by_worker(create_app(EchoSource(), thread_store=PostgresThreadStore(url)))


def test_an_edit_on_one_worker_switches_and_votes_on_the_other(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    app = f"tests.test_branches_prod:branches_app({postgres_cluster.url!r})"
    with ProdServer("--workers", "2", "--app", app) as server:
        url, thread_id = server.url, new_thread_id()
        history = six_turns(url, thread_id)
        messages = httpx.get(f"{url}threads/{thread_id}/messages", timeout=10)
        one = worker_of(messages)
        other = next(pid for pid in server.worker_pids if pid != one)
        first = messages.json()
        with paused(one):
            edited = send(url, thread_id, [*history, {"role": "user", "text": "q3 edited"}], {"edit": first[4]["id"]})
            assert edited.status == 200 and worker_of(edited) == other
        with paused(other):
            shown = httpx.get(f"{url}threads/{thread_id}/messages", timeout=10)
            assert worker_of(shown) == one and plain(shown.json())[4] == ("user", "q3 edited")
            assert shown.json()[4]["versions"]["ids"] == [first[4]["id"], shown.json()[4]["id"]]
            switched = httpx.post(f"{url}threads/{thread_id}/switch", json={"message_id": first[4]["id"]}, timeout=10)
            assert worker_of(switched) == one and plain(switched.json()) == plain(history)
        with paused(one):
            shown = httpx.get(f"{url}threads/{thread_id}/messages", timeout=10)
            assert worker_of(shown) == other and plain(shown.json()) == plain(history)
            path = f"{url}threads/{thread_id}/messages/{first[7]['id']}/feedback"
            assert httpx.put(path, json={"vote": "up"}, timeout=10).json() == {"vote": "up", "comment": ""}
        with paused(other):
            shown = httpx.get(f"{url}threads/{thread_id}/messages", timeout=10)
            assert worker_of(shown) == one and shown.json()[7]["feedback"] == {"vote": "up", "comment": ""}
