"""The thread store: each thread's visible messages (for sources that keep none), its owner, and stop requests,
in plain tables of an embedded SQLite file or a PostgreSQL database shared by several processes.

Plain tables rather than a LangGraph checkpoint: a transcript is append-only rows read back in order, and a
checkpoint would re-serialise the whole conversation at every turn. Graphs keep their own checkpointer;
`checkpointer()` gives LangGraph's saver on the same database for the kit's own agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kit.errors import ChatError
from kit.pipeline.sources import Message
from kit.threads import files as thread_files
from kit.threads.feedback import feedback_schema
from kit.threads.tree import ROOT, Tree
from kit.threads.writer import GroupWriter, writer_for

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SQLITE_FILE = "kit-threads.sqlite"
STOP_REQUEST_TTL_S = 600.0  # a stop for a stream that never shows up is forgotten after this
SQLITE_BUSY_S = 10.0  # how long a SQLite connection waits for another process's write lock


class StoreDown(ChatError):
    """The thread store cannot be reached: a 503, with the cause in the server log only."""

    status = 503


STORE_DOWN = "the conversation store is unavailable right now; please try again shortly"


@contextlib.contextmanager
def down_on_error(name: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A database error inside becomes StoreDown (a 503 for the client), the cause in the server log only."""
    try:
        yield
    except errors as error:
        log.warning("%s failed: %s", name, error, exc_info=error)
        raise StoreDown(STORE_DOWN) from None


class ThreadStore:
    """Transcripts, owners and stop requests over SQL; the dialects differ only in connections and DDL.

    Every method raises StoreDown (503) when the database fails, and logs why.
    """

    placeholder = "?"
    schema: tuple[str, ...] = ()
    # Run after the schema, each failure ignored: a store made before a column existed gets it added.
    migrations: tuple[str, ...] = (
        "ALTER TABLE kit_thread_messages ADD COLUMN custom TEXT",
        "ALTER TABLE kit_thread_messages ADD COLUMN parent INTEGER",  # issue 27: NULL on older rows (kit.threads.tree)
        "ALTER TABLE kit_thread_messages ADD COLUMN trace_run TEXT",  # issue 27: feedback to LangSmith
    )
    name = "thread store"

    def __init__(self) -> None:
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # -- what the kit uses -------------------------------------------------------------------------------

    def messages(self, thread_id: str) -> list[Message]:
        """The thread's current branch in order, as Deep Chat shows them, each with its `id` (and `versions` where
        it has siblings: kit.threads.tree); [] for a thread never seen."""
        with self._guarded() as connection:
            sql = "SELECT id, parent, role, text, custom FROM kit_thread_messages WHERE thread_id = ? ORDER BY id"
            rows = connection.execute(self._sql(sql), (thread_id,)).fetchall()
            tree = Tree([(int(row["id"]), row["parent"]) for row in rows], self._head(connection, thread_id))
            by_id = {int(row["id"]): row for row in rows}
            shown = [by_id[row_id] for row_id in tree.branch()]
            messages = [_message(row, tree.versions(int(row["id"]))) for row in shown]
            thread_files.attach(connection, self._sql, thread_id, shown, messages)  # issue 28: files, no content
        return messages

    def append(self, thread_id: str, messages: Sequence[Message]) -> None:
        """Add messages below the head of the thread's current branch, each the child of the one before, and
        make the last one the head: all or none, in one transaction (their files, if any, too)."""
        now = time.time()
        # Deep Chat's `custom` field (a reply's token usage) is kept as JSON, as the page gets it back.
        # `trace_run`: the reply's root run in a tracer (kit.threads.trace_runs), for feedback; never shown.
        rows = [
            (thread_id, str(m["role"]), str(m.get("text", "")), _custom(m), now, m.get("trace_run")) for m in messages
        ]
        if not rows:
            return
        sql = (
            "INSERT INTO kit_thread_messages (thread_id, role, text, custom, created, trace_run, parent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id"
        )

        def hang(connection: Any) -> None:
            self._lock_thread(connection, thread_id)  # two appends at once: one hangs below the other
            leaf = self._leaf(connection, thread_id)
            for row, message in zip(rows, messages, strict=True):
                leaf = int(connection.execute(self._sql(sql), (*row, leaf)).fetchone()["id"])
                if message.get("files"):
                    thread_files.keep(connection, self._sql, thread_id, leaf, message["files"])  # issue 28
            self.set_head_on(connection, thread_id, leaf)

        self._write(hang)

    def set_head_on(self, connection: Any, thread_id: str, leaf: int) -> None:
        """Make `leaf` the end of the thread's current branch, on the caller's transaction (ROOT: an empty one)."""
        sql = (
            "INSERT INTO kit_thread_heads (thread_id, leaf) VALUES (?, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET leaf = excluded.leaf"
        )
        connection.execute(self._sql(sql), (thread_id, leaf))

    def set_head(self, thread_id: str, leaf: int) -> None:
        """Make `leaf` the end of the thread's current branch."""
        self._write(lambda connection: self.set_head_on(connection, thread_id, leaf))

    def switch(self, thread_id: str, message_id: int) -> bool:
        """Make the branch through this message (and below it its newest continuation) current; False when the
        thread has no such message."""
        return self._write(lambda connection: self.switch_on(connection, thread_id, message_id))

    def switch_on(self, connection: Any, thread_id: str, message_id: int) -> bool:
        """`switch` on the caller's transaction (a switch holds the thread as a run would, in one commit)."""
        self._lock_thread(connection, thread_id)
        tree = self._tree(connection, thread_id)
        if message_id not in tree.parent:
            return False
        self.set_head_on(connection, thread_id, tree.newest_leaf(message_id))
        return True

    def keep_answer_run(self, thread_id: str, message_id: str, run_id: str) -> None:
        """Note the tracer's root run of the reply whose answer this message is, for a source that keeps its own
        thread (a checkpointed graph: its message ids are the checkpoint's, the transcript has no row for them)."""
        sql = (
            "INSERT INTO kit_trace_runs (thread_id, message_id, run_id) VALUES (?, ?, ?) "
            "ON CONFLICT (thread_id, message_id) DO UPDATE SET run_id = excluded.run_id"
        )
        self._execute_many(sql, [(thread_id, message_id, run_id)])

    def answer_run(self, thread_id: str, message_id: str) -> str | None:
        """The root run `keep_answer_run` noted for this answer (None: none)."""
        sql = "SELECT run_id FROM kit_trace_runs WHERE thread_id = ? AND message_id = ?"
        rows = self._query(sql, (thread_id, message_id))
        return rows[0]["run_id"] if rows else None

    def trace_run(self, thread_id: str, message_id: int) -> str | None:
        """The tracer's root run of the reply this message is part of (None: not traced, or no such message)."""
        sql = "SELECT trace_run FROM kit_thread_messages WHERE thread_id = ? AND id = ?"
        rows = self._query(sql, (thread_id, message_id))
        return rows[0]["trace_run"] if rows else None

    def _tree(self, connection: Any, thread_id: str) -> Tree:
        sql = "SELECT id, parent FROM kit_thread_messages WHERE thread_id = ? ORDER BY id"
        rows = connection.execute(self._sql(sql), (thread_id,)).fetchall()
        return Tree([(int(row["id"]), row["parent"]) for row in rows], self._head(connection, thread_id))

    def _lock_thread(self, connection: Any, thread_id: str) -> None:
        """Order the writes of one thread's tree until the transaction ends (SQLite: it has one writer)."""

    def _head(self, connection: Any, thread_id: str) -> int | None:
        row = connection.execute(self._sql("SELECT leaf FROM kit_thread_heads WHERE thread_id = ?"), (thread_id,))
        found = row.fetchone()
        return None if found is None else int(found["leaf"])

    def _leaf(self, connection: Any, thread_id: str) -> int:
        head = self._head(connection, thread_id)
        if head is not None:
            return head
        sql = "SELECT MAX(id) AS leaf FROM kit_thread_messages WHERE thread_id = ?"
        found = connection.execute(self._sql(sql), (thread_id,)).fetchone()["leaf"]
        return ROOT if found is None else int(found)

    def file(self, thread_id: str, sha256: str) -> tuple[dict[str, Any], bytes] | None:
        """A file one of the thread's messages carried (name, type, ...) and its bytes; None if none did."""
        with self._guarded() as connection:
            return thread_files.blob(connection, self._sql, thread_id, sha256)

    def claim(self, thread_id: str, owner: str) -> str:
        """Bind the thread to `owner` unless it has one already; returns the thread's owner after the call."""
        self._execute_many(
            "INSERT INTO kit_thread_owners (thread_id, owner) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(thread_id, owner)],
        )
        return self.owner(thread_id) or owner

    def owner(self, thread_id: str) -> str | None:
        """Whom the thread belongs to (None: nobody claimed it)."""
        rows = self._query("SELECT owner FROM kit_thread_owners WHERE thread_id = ?", (thread_id,))
        return rows[0]["owner"] if rows else None

    def post_stop(self, stream_id: str) -> None:
        """Ask whichever process serves this stream to stop it (it polls `take_stops`)."""
        now = time.time()
        self._execute_many("DELETE FROM kit_stop_requests WHERE created < ?", [(now - STOP_REQUEST_TTL_S,)])
        sql = "INSERT INTO kit_stop_requests (stream_id, created) VALUES (?, ?) ON CONFLICT DO NOTHING"
        self._execute_many(sql, [(stream_id, now)])

    def take_stops(self, stream_ids: Sequence[str]) -> set[str]:
        """The ids among these that someone asked to stop; their requests are consumed."""
        if not stream_ids:
            return set()
        marks = ", ".join("?" * len(stream_ids))
        rows = self._query(f"SELECT stream_id FROM kit_stop_requests WHERE stream_id IN ({marks})", tuple(stream_ids))
        found = {row["stream_id"] for row in rows}
        if found:
            marks = ", ".join("?" * len(found))
            self._execute_many(f"DELETE FROM kit_stop_requests WHERE stream_id IN ({marks})", [tuple(found)])
        return found

    def claim_interrupt(self, thread_id: str, interrupt_id: str) -> bool:
        """Take the right to resume this interrupt: True for exactly one caller, in any process (issue 18)."""
        sql = (
            "INSERT INTO kit_interrupt_claims (thread_id, interrupt_id, created) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING"
        )
        params = (thread_id, interrupt_id, time.time())
        return self._write(lambda connection: connection.execute(self._sql(sql), params).rowcount == 1)

    def interrupt_claimed(self, thread_id: str, interrupt_id: str) -> bool:
        """Whether someone already resumed (or is resuming) this interrupt."""
        sql = "SELECT 1 AS claimed FROM kit_interrupt_claims WHERE thread_id = ? AND interrupt_id = ?"
        return bool(self._query(sql, (thread_id, interrupt_id)))

    def release_interrupt(self, thread_id: str, interrupt_id: str) -> None:
        """Give a claim back: the resume never got past the interrupt, so it may be decided again."""
        sql = "DELETE FROM kit_interrupt_claims WHERE thread_id = ? AND interrupt_id = ?"
        self._execute_many(sql, [(thread_id, interrupt_id)])

    def checkpointer(self) -> Any:
        """LangGraph's checkpointer on this database, for a graph whose memory should live here."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the store reopens them on next use)."""

    # -- SQL plumbing ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[Any]:
        with down_on_error(self.name, self._errors()):
            self._ensure_schema()
            with self._connection() as connection:
                yield connection

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._guarded() as connection:
            return list(connection.execute(self._sql(sql), params).fetchall())

    def _execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        def execute(connection: Any) -> None:
            connection.cursor().executemany(self._sql(sql), rows)  # no cursor leaves the writer's thread

        self._write(execute)

    def _write(self, work: Callable[[Any], T]) -> T:
        """`work(connection)` in one write transaction (its statements commit together); StoreDown on failure."""
        with self._guarded() as connection:
            return work(connection)

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self._create_schema()
                self._schema_ready = True

    def _create_schema(self) -> None:
        with self._connection() as connection:
            for statement in self.schema:
                connection.execute(statement)
        for statement in self.migrations:
            with contextlib.suppress(*self._errors()), self._connection() as connection:
                connection.execute(statement)  # fails when the column is there already


def _custom(message: Message) -> str | None:
    custom = message.get("custom")
    return None if custom is None else json.dumps(custom, ensure_ascii=False)


def _message(row: Any, versions: dict[str, Any] | None) -> Message:
    message: Message = {"id": str(row["id"]), "role": row["role"], "text": row["text"]}
    if row["custom"] is not None:
        message["custom"] = json.loads(row["custom"])
    if versions is not None:
        message["versions"] = versions
    return message


class SqliteThreadStore(ThreadStore):
    """The embedded default: one SQLite file (WAL mode, so readers never wait for the writer).

    >>> import tempfile, os
    >>> store = SqliteThreadStore(os.path.join(tempfile.mkdtemp(), "threads.sqlite"))
    >>> store.append("0123456789abcdef", [{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"}])
    >>> store.messages("0123456789abcdef")
    [{'id': '1', 'role': 'user', 'text': 'Hi'}, {'id': '2', 'role': 'ai', 'text': 'Hello'}]
    """

    schema = (
        "CREATE TABLE IF NOT EXISTS kit_thread_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "thread_id TEXT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, custom TEXT, created REAL NOT NULL, "
        "parent INTEGER, trace_run TEXT)",
        "CREATE INDEX IF NOT EXISTS kit_thread_messages_by_thread ON kit_thread_messages (thread_id, id)",
        "CREATE TABLE IF NOT EXISTS kit_thread_owners (thread_id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_thread_heads (thread_id TEXT PRIMARY KEY, leaf BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_trace_runs (thread_id TEXT NOT NULL, message_id TEXT NOT NULL, "
        "run_id TEXT NOT NULL, PRIMARY KEY (thread_id, message_id))",
        "CREATE TABLE IF NOT EXISTS kit_stop_requests (stream_id TEXT PRIMARY KEY, created REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_interrupt_claims (thread_id TEXT NOT NULL, interrupt_id TEXT NOT NULL, "
        "created REAL NOT NULL, PRIMARY KEY (thread_id, interrupt_id))",
        *thread_files.file_schema("BLOB", "INTEGER"),
        *feedback_schema("REAL"),  # issue 27
        "CREATE TABLE IF NOT EXISTS kit_thread_runs (thread_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
        "worker TEXT NOT NULL, seen REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, "
        "worker TEXT NOT NULL, started REAL NOT NULL, seen REAL NOT NULL, ended REAL, read_at REAL)",
        "CREATE INDEX IF NOT EXISTS kit_runs_by_thread ON kit_runs (thread_id, started)",
        "CREATE TABLE IF NOT EXISTS kit_run_events (run_id TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL, "
        "PRIMARY KEY (run_id, id))",
    )

    def __init__(self, path: str | Path = DEFAULT_SQLITE_FILE) -> None:
        super().__init__()
        self.path = Path(path).resolve()
        self.name = f"SQLite thread store {self.path}"
        self._saver: Any = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=SQLITE_BUSY_S)
        connection.row_factory = sqlite3.Row
        # In WAL mode NORMAL is safe against a crash of the process (only a power cut may lose the last commits)
        # and spares an fsync per commit: a run's event log commits a batch every quarter second.
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # A connection per read: a few microseconds for SQLite, and safe in any thread or forked worker.
        connection = self._connect()
        try:
            with connection:  # one transaction: committed on success, rolled back on error
                yield connection
        finally:
            connection.close()

    @property
    def writer(self) -> GroupWriter:
        """This process's writer of the file (kit.threads.writer): its writes share transactions."""
        return writer_for(self.path, self._connect)

    def _write(self, work: Callable[[Any], T]) -> T:
        with down_on_error(self.name, self._errors()):
            self._ensure_schema()
            return self.writer.write(work)

    def _create_schema(self) -> None:
        if not self.path.parent.is_dir():
            raise sqlite3.OperationalError(f"no directory {self.path.parent} for the SQLite file")
        with self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        super()._create_schema()
        log.info("threads: conversations are kept in the SQLite file %s", self.path)

    def checkpointer(self) -> Any:
        """LangGraph's SqliteSaver on the same file (one shared connection; the saver locks around it)."""
        if self._saver is None:
            from langgraph.checkpoint.sqlite import SqliteSaver

            self._ensure_schema()
            self._saver = SqliteSaver(sqlite3.connect(self.path, check_same_thread=False, timeout=SQLITE_BUSY_S))
        return self._saver

    def close(self) -> None:
        if self._saver is not None:
            self._saver.conn.close()
            self._saver = None


class PostgresThreadStore(ThreadStore):
    """PostgreSQL, for several worker processes or hosts: a small connection pool per process, opened on first
    use (after gunicorn forks); a database that does not answer within `timeout_s` is a 503."""

    placeholder = "%s"
    schema = (
        "CREATE TABLE IF NOT EXISTS kit_thread_messages (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "thread_id TEXT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, custom TEXT, "
        "created DOUBLE PRECISION NOT NULL, parent BIGINT, trace_run TEXT)",
        "CREATE INDEX IF NOT EXISTS kit_thread_messages_by_thread ON kit_thread_messages (thread_id, id)",
        "CREATE TABLE IF NOT EXISTS kit_thread_owners (thread_id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_thread_heads (thread_id TEXT PRIMARY KEY, leaf BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_trace_runs (thread_id TEXT NOT NULL, message_id TEXT NOT NULL, "
        "run_id TEXT NOT NULL, PRIMARY KEY (thread_id, message_id))",
        "CREATE TABLE IF NOT EXISTS kit_stop_requests (stream_id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_interrupt_claims (thread_id TEXT NOT NULL, interrupt_id TEXT NOT NULL, "
        "created DOUBLE PRECISION NOT NULL, PRIMARY KEY (thread_id, interrupt_id))",
        *thread_files.file_schema("BYTEA", "BIGINT"),
        *feedback_schema("DOUBLE PRECISION"),  # issue 27
        "CREATE TABLE IF NOT EXISTS kit_thread_runs (thread_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
        "worker TEXT NOT NULL, seen DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kit_runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, "
        "worker TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, seen DOUBLE PRECISION NOT NULL, "
        "ended DOUBLE PRECISION, "
        "read_at DOUBLE PRECISION)",
        "CREATE INDEX IF NOT EXISTS kit_runs_by_thread ON kit_runs (thread_id, started)",
        "CREATE TABLE IF NOT EXISTS kit_run_events (run_id TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL, "
        "PRIMARY KEY (run_id, id))",
    )
    migrations = (
        "ALTER TABLE kit_thread_messages ADD COLUMN IF NOT EXISTS custom TEXT",
        "ALTER TABLE kit_thread_messages ADD COLUMN IF NOT EXISTS parent BIGINT",  # issue 27
        "ALTER TABLE kit_thread_messages ADD COLUMN IF NOT EXISTS trace_run TEXT",
    )

    def __init__(self, conninfo: str, *, max_connections: int = 8, timeout_s: float = 5.0) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.name = f"PostgreSQL thread store {_without_password(conninfo)}"
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._saver: Any = None

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg
        import psycopg_pool

        return (psycopg.Error, psycopg_pool.PoolTimeout, OSError)  # OSError: TimeoutError too

    def pool(self) -> Any:
        """The process's connection pool (autocommit, rows as dicts: what LangGraph's PostgresSaver needs)."""
        with self._pool_lock:
            if self._pool is None:
                from psycopg.rows import dict_row
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.max_connections,
                    timeout=self.timeout_s,
                    open=False,
                    check=ConnectionPool.check_connection,  # a restarted server: no stale connection handed out
                    kwargs={
                        "autocommit": True,
                        "row_factory": dict_row,
                        "connect_timeout": max(int(self.timeout_s), 1),
                    },
                )
                self._pool.open(wait=False)
            return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        with self.pool().connection() as connection, connection.transaction():
            yield connection

    def _lock_thread(self, connection: Any, thread_id: str) -> None:
        # Read committed lets two transactions read the same head; a lock per thread (by its hash) orders them.
        connection.execute("SELECT pg_advisory_xact_lock(7366419, hashtext(%s))", (thread_id,))

    def _create_schema(self) -> None:
        with self._connection() as connection:
            # Two workers starting at once would race on CREATE TABLE; one lock orders them.
            connection.execute("SELECT pg_advisory_xact_lock(7366417)")
            for statement in (*self.schema, *self.migrations):
                connection.execute(statement)
        log.info("threads: conversations are kept in %s", self.name)

    def checkpointer(self) -> Any:
        """LangGraph's PostgresSaver on the same pool (its tables are created once)."""
        if self._saver is None:
            from langgraph.checkpoint.postgres import PostgresSaver

            saver = PostgresSaver(self.pool())
            with down_on_error(self.name, self._errors()):
                self._ensure_schema()
                # Workers starting together would race on the saver's migrations; a session lock orders them.
                # No transaction stays open meanwhile: a migration builds an index CONCURRENTLY, which waits
                # for every open transaction, this process's own included.
                with self.pool().connection() as lock:
                    _take_advisory_lock(lock, 7366418, self.timeout_s * 12)
                    try:
                        saver.setup()
                    finally:
                        lock.execute("SELECT pg_advisory_unlock(7366418)")
            self._saver = saver
        return self._saver

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        self._saver = None
        self._schema_ready = False


def _take_advisory_lock(connection: Any, key: int, timeout_s: float) -> None:
    """A session lock, asked for again every 0.1 s rather than waited for in one statement: a waiting
    statement holds a snapshot, which the holder's CREATE INDEX CONCURRENTLY would wait for (a deadlock)."""
    deadline = time.monotonic() + timeout_s
    while not connection.execute("SELECT pg_try_advisory_lock(%s) AS locked", (key,)).fetchone()["locked"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process held the set-up lock for over {timeout_s:g} s")
        time.sleep(0.1)


def _without_password(conninfo: str) -> str:
    """A connection string fit for a log line.

    >>> _without_password("postgresql://kit:secret@127.0.0.1:5432/kit")
    'postgresql://kit:***@127.0.0.1:5432/kit'
    """
    head, at, tail = conninfo.rpartition("@")
    if not at or "://" not in head:
        return conninfo
    scheme, _, credentials = head.partition("://")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{tail}"


def open_store(where: str | Path | ThreadStore | None = None) -> ThreadStore:
    """A store from a URL or path: `postgresql://...` (or `postgres://`), `sqlite:///path`, a plain file path,
    a store object as it is, or None for `kit-threads.sqlite` in the working directory.

    >>> open_store("postgresql://127.0.0.1/kit").name
    'PostgreSQL thread store postgresql://127.0.0.1/kit'
    """
    if isinstance(where, ThreadStore):
        return where
    text = str(where) if where is not None else DEFAULT_SQLITE_FILE
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresThreadStore(text)
    return SqliteThreadStore(text.removeprefix("sqlite:///").removeprefix("sqlite://"))
