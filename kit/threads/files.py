"""The files of a thread's transcript: which message carried which file, and each file's bytes once, keyed by their
SHA-256 (the same file attached twice, or in two threads, is kept once). Tables of the thread store's database,
written in the transcript's own transaction (kit.threads.store)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from kit.pipeline.sources import Message

Sql = Callable[[str], str]
"""The store's dialect: "?" placeholders as the driver wants them."""


def file_schema(blob: str, integer: str) -> tuple[str, ...]:
    """The two tables, in a dialect's types for bytes and big integers."""
    return (
        f"CREATE TABLE IF NOT EXISTS kit_thread_files (thread_id TEXT NOT NULL, message_id {integer} NOT NULL, "
        "files TEXT NOT NULL, PRIMARY KEY (message_id))",
        "CREATE INDEX IF NOT EXISTS kit_thread_files_by_thread ON kit_thread_files (thread_id, message_id)",
        f"CREATE TABLE IF NOT EXISTS kit_file_blobs (sha256 TEXT PRIMARY KEY, data {blob} NOT NULL)",
    )


def listed(files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the transcript says of each file: everything but its content.

    >>> listed([{"name": "a.txt", "type": "text/plain", "size": 2, "kind": "text", "sha256": "ab", "content": "Hi"}])
    [{'name': 'a.txt', 'type': 'text/plain', 'size': 2, 'kind': 'text', 'sha256': 'ab'}]
    """
    return [
        {key: file[key] for key in ("name", "type", "size", "kind", "sha256")} for file in files if file.get("sha256")
    ]


def keep(connection: Any, sql: Sql, thread_id: str, message_id: int, files: Sequence[dict[str, Any]]) -> None:
    """Record the files of one transcript message, and each file's bytes unless the store has them already."""
    shown = listed(files)
    if not shown:
        return
    connection.execute(
        sql("INSERT INTO kit_thread_files (thread_id, message_id, files) VALUES (?, ?, ?)"),
        (thread_id, message_id, json.dumps(shown, ensure_ascii=False)),
    )
    for file in files:
        if file.get("sha256") and isinstance(file.get("data"), bytes):
            connection.execute(
                sql("INSERT INTO kit_file_blobs (sha256, data) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                (file["sha256"], file["data"]),
            )


def attach(connection: Any, sql: Sql, thread_id: str, rows: Sequence[Any], messages: list[Message]) -> None:
    """Put the recorded files back on the transcript's messages (`rows` hold each message's id, in order)."""
    found = connection.execute(
        sql("SELECT message_id, files FROM kit_thread_files WHERE thread_id = ?"), (thread_id,)
    ).fetchall()
    by_id = {int(row["message_id"]): json.loads(row["files"]) for row in found}
    for row, message in zip(rows, messages, strict=True):
        if int(row["id"]) in by_id:
            message["files"] = by_id[int(row["id"])]


def blob(connection: Any, sql: Sql, thread_id: str, sha256: str) -> tuple[dict[str, Any], bytes] | None:
    """A file of this thread and its bytes; None when no message of the thread carried it."""
    rows = connection.execute(sql("SELECT files FROM kit_thread_files WHERE thread_id = ?"), (thread_id,)).fetchall()
    listing = next((f for row in rows for f in json.loads(row["files"]) if f["sha256"] == sha256), None)
    if listing is None:
        return None
    data = connection.execute(sql("SELECT data FROM kit_file_blobs WHERE sha256 = ?"), (sha256,)).fetchone()
    return None if data is None else (listing, bytes(data["data"]))
