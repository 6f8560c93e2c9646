"""Rejoining across workers in Debian's chromium, on the kit's page: two gunicorn workers share one PostgreSQL
thread store behind nginx, a reply runs on one, the page reloads at a random moment and its reload reaches the
other; the page rejoins from the log and ends with the same bubble as an uninterrupted run, byte for byte."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kit.testing.browser import chromium_page
from tests.helpers import wait_until
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)
from tests.prod_server import WORKER_HEADER
from tests.rejoin_prod import TwoWorkers
from tests.test_browser import send
from tests.test_rejoin_browser import answer_count, last_answer, settled

pytestmark = pytest.mark.timeout(240)


def workers_by_route(page: Any) -> dict[str, list[int]]:
    """The worker that answered each chat request the page makes from now on, by route."""
    seen: dict[str, list[int]] = {"chat-stream": [], "chat-stream/rejoin": []}

    def record(response: Any) -> None:
        for route, pids in seen.items():
            if response.url.endswith("/" + route) and WORKER_HEADER.lower() in response.headers:
                pids.append(int(response.headers[WORKER_HEADER.lower()]))

    page.on("response", record)
    return seen


def test_a_reload_on_the_other_worker_rejoins_into_an_identical_bubble(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    # 2,000 pieces, 3 ms apart: about 6 s of reply, so the reload lands mid-reply on a loaded machine too.
    with TwoWorkers(postgres_cluster.url, pieces=2000, delay_s=0.003) as two, chromium_page() as page:
        page.goto(two.url)
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 0, timeout=15)
        send(page, "write")
        uninterrupted = settled(page)
        page.locator("#kit-new-chat").click()
        assert wait_until(lambda: answer_count(page) == 0)
        workers = workers_by_route(page)
        send(page, "write")
        assert wait_until(lambda: "w" in last_answer(page), timeout=10)
        runner = two.worker_pid(two.current)
        other = two.switch()  # the open stream stays on the runner; the reload's requests go to the other
        page.wait_for_timeout(random.uniform(100, 2000))  # a random moment of the reply
        page.reload()
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.rejoined") is not None, 15)
        assert settled(page) == uninterrupted
        assert answer_count(page) == 1
        assert workers == {"chat-stream": [runner], "chat-stream/rejoin": [other]}, (runner, other, workers)
        page.reload()  # after the end, on the other worker: the transcript holds the whole reply, once
        assert wait_until(lambda: answer_count(page) == 1 and last_answer(page) == uninterrupted, timeout=10)
