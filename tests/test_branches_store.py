"""The tree in the thread store (issue 27): a store made before the tree (no `parent` column, no heads) is
migrated in place, its transcripts one branch each, on SQLite and on PostgreSQL; appends and switches after it."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from kit.threads.ids import new_thread_id
from kit.threads.store import PostgresThreadStore, SqliteThreadStore, ThreadStore
from tests.helpers import bubbles
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)

# The transcript table as the kit created it before issue 27 (both dialects).
OLD_SQLITE = (
    "CREATE TABLE kit_thread_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, thread_id TEXT NOT NULL, "
    "role TEXT NOT NULL, text TEXT NOT NULL, custom TEXT, created REAL NOT NULL)"
)
OLD_POSTGRES = (
    "CREATE TABLE kit_thread_messages (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, thread_id TEXT NOT NULL, "
    "role TEXT NOT NULL, text TEXT NOT NULL, custom TEXT, created DOUBLE PRECISION NOT NULL)"
)
OLD_ROWS = [("user", "q1"), ("ai", "a1"), ("user", "q2"), ("ai", "a2")]


def old_sqlite_store(path: Path, thread_id: str) -> ThreadStore:
    with sqlite3.connect(path) as db:
        db.execute(OLD_SQLITE)
        db.executemany(
            "INSERT INTO kit_thread_messages (thread_id, role, text, created) VALUES (?, ?, ?, 0)",
            [(thread_id, role, text) for role, text in OLD_ROWS],
        )
    return SqliteThreadStore(path)


def old_postgres_store(cluster: PostgresCluster, thread_id: str) -> ThreadStore:
    import psycopg

    name = f"old_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(OLD_POSTGRES)
        for role, text in OLD_ROWS:
            db.execute(
                "INSERT INTO kit_thread_messages (thread_id, role, text, created) VALUES (%s, %s, %s, 0)",
                (thread_id, role, text),
            )
    return PostgresThreadStore(url)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_store_from_before_the_tree_is_migrated_and_branches(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    thread_id = new_thread_id()
    if dialect == "sqlite":
        store = old_sqlite_store(tmp_path / "old.sqlite", thread_id)
    else:
        store = old_postgres_store(request.getfixturevalue("postgres_cluster"), thread_id)
    try:
        kept = store.messages(thread_id)
        assert [(m["role"], m["text"]) for m in kept] == OLD_ROWS and all("versions" not in m for m in kept)
        store.append(thread_id, [{"role": "user", "text": "q3"}, {"role": "ai", "text": "a3"}])
        assert [m["text"] for m in store.messages(thread_id)] == ["q1", "a1", "q2", "a2", "q3", "a3"]
        # An edit of q2 (a sibling below a1), then a switch back to the old q2 and its continuation.
        with store._guarded() as connection:
            store.set_head_on(connection, thread_id, int(kept[1]["id"]))
        store.append(thread_id, [{"role": "user", "text": "q2 edited"}, {"role": "ai", "text": "a2'"}])
        edited = store.messages(thread_id)
        assert bubbles(edited)[2:] == [{"role": "user", "text": "q2 edited"}, {"role": "ai", "text": "a2'"}]
        assert edited[2]["versions"] == {"index": 2, "count": 2, "ids": [kept[2]["id"], edited[2]["id"]]}
        assert store.switch(thread_id, int(kept[2]["id"])) and not store.switch(thread_id, 10**9)
        assert [m["text"] for m in store.messages(thread_id)] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    finally:
        store.close()
