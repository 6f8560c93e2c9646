"""Hundreds of new conversations starting at once on one SQLite file, over a real server: every reply whole, no
error, every transcript kept, every thread freed, and far fewer commits than writes (group commit, and a run's
writes merged: its claim starts it in the log, its last log write frees the thread)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kit import create_app
from kit.serving.client import chat_body
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.runs import REFRESH_S
from kit.threads.store import SqliteThreadStore
from tests.helpers import bubbles

STREAMS = 400  # a few hundred: far more at once meet the test server's listen queue (128) before the store
TOKENS = [f"t{index} " for index in range(20)]
WHOLE = "".join(TOKENS)
WRITES_PER_RUN = 3  # the claim with the run's start, the transcript, the log's end with the thread's release


def source(messages: list[dict[str, str]]) -> Iterator[str]:
    yield from TOKENS


async def one(client: httpx.AsyncClient, url: str, thread_id: str) -> tuple[int, str]:
    text = []
    headers = {THREAD_ID_HEADER: thread_id, "Accept": "text/event-stream"}
    async with client.stream("POST", url, json=chat_body("go"), headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                text.append(line)
        return response.status_code, "".join(text)


async def wave(url: str, thread_ids: list[str]) -> list[tuple[int, str]]:
    limits = httpx.Limits(max_connections=len(thread_ids) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(one(client, url, thread_id) for thread_id in thread_ids))


@pytest.mark.timeout(300)
def test_hundreds_of_new_conversations_at_once_on_sqlite_all_finish_whole(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteThreadStore(tmp_path / "t.sqlite")
    server = serve(create_app(source, coalesce_ms=0, thread_store=store))
    url = server.url + "chat-stream"
    asyncio.run(wave(url, [new_thread_id()]))  # the schema made
    writes, commits = store.writer.writes, store.writer.commits
    asyncio.run(wave(url, [new_thread_id()]))
    assert store.writer.writes - writes == WRITES_PER_RUN  # was 7, each its own commit
    threads = [new_thread_id() for _ in range(STREAMS)]
    writes, commits = store.writer.writes, store.writer.commits
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kit"):
        replies = asyncio.run(wave(url, threads))
    # A run still going after REFRESH_S refreshes its claim (one more write): on a loaded machine, some do.
    refreshes = int((time.monotonic() - started) // REFRESH_S)
    assert [status for status, _ in replies] == [200] * STREAMS
    lost = [record.getMessage() for record in caplog.records if record.name.startswith("kit")]
    assert lost == []  # no "database is locked", no write lost
    assert all(text.count('"text"') == len(TOKENS) for _, text in replies)
    assert WRITES_PER_RUN * STREAMS <= store.writer.writes - writes <= (WRITES_PER_RUN + refreshes) * STREAMS
    assert store.writer.commits - commits < STREAMS  # writes of many runs share each commit
    with sqlite3.connect(store.path) as connection:
        kept = dict(connection.execute("SELECT thread_id, COUNT(*) FROM kit_thread_messages GROUP BY thread_id"))
        assert connection.execute("SELECT COUNT(*) FROM kit_thread_runs").fetchone() == (0,)  # every thread free
        assert connection.execute("SELECT COUNT(*) FROM kit_runs WHERE ended IS NULL").fetchone() == (0,)
    assert all(kept.get(thread_id) == 2 for thread_id in threads)
    assert bubbles(store.messages(threads[-1])) == [{"role": "user", "text": "go"}, {"role": "ai", "text": WHOLE}]
