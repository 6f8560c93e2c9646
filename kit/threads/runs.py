"""One run per thread at a time, across worker processes: a claim row per thread in the thread store (SQLite or
PostgreSQL), taken in one statement, kept fresh while the run lives, given back when it ends. A claim whose run
stopped refreshing it (its worker died) is taken over."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kit.threads.store import ThreadStore

Then = Callable[[Any], None]
"""More writes on a claim's transaction (its connection): they commit, or fail, with it."""
STALE_S = 20.0  # a claim not refreshed for this long belongs to a run whose worker is gone
REFRESH_S = 5.0  # how often a live run refreshes its claim (well under STALE_S)


def this_worker() -> str:
    """This process, as claims and runs name it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str) -> bool:
    """Whether `worker` (host:pid) is a process of this host that no longer exists (elsewhere: unknown, False).

    >>> worker_gone(this_worker()), worker_gone(f"{socket.gethostname()}:999999999"), worker_gone("elsewhere:1")
    (False, True, False)
    """
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


class RunClaims:
    """The claims of one store.

    >>> import os, tempfile
    >>> from kit.threads.store import SqliteThreadStore
    >>> claims = RunClaims(SqliteThreadStore(os.path.join(tempfile.mkdtemp(), "t.sqlite")))
    >>> claims.claim("thread-0123456789", "run-a"), claims.claim("thread-0123456789", "run-b")
    (True, False)
    >>> claims.holder("thread-0123456789")
    'run-a'
    >>> claims.release("thread-0123456789", "run-a"); claims.claim("thread-0123456789", "run-b")
    True
    """

    def __init__(self, store: ThreadStore, stale_s: float = STALE_S) -> None:
        self.store = store
        self.stale_s = stale_s

    def claim(self, thread_id: str, run_id: str, then: Then | None = None) -> bool:
        """Take the thread for this run: True for exactly one caller while the thread is free (or its claim stale,
        or held by a process of this host that no longer exists: a worker killed mid-reply). `then(connection)`
        runs in the same transaction when the claim is taken (a run's first rows: one commit starts a run)."""
        if self._upsert(thread_id, run_id, dead="", then=then):
            return True
        dead = self._dead_worker(thread_id)
        return bool(dead) and self._upsert(thread_id, run_id, dead=dead, then=then)

    def _upsert(self, thread_id: str, run_id: str, *, dead: str, then: Then | None) -> bool:
        now = time.time()
        sql = (
            "INSERT INTO kit_thread_runs (thread_id, run_id, worker, seen) VALUES (?, ?, ?, ?) ON CONFLICT "
            "(thread_id) DO UPDATE SET run_id = excluded.run_id, worker = excluded.worker, seen = excluded.seen "
            "WHERE kit_thread_runs.seen < ? OR kit_thread_runs.worker = ?"
        )
        params = (thread_id, run_id, this_worker(), now, now - self.stale_s, dead)

        def upsert(connection: Any) -> bool:
            claimed = bool(connection.execute(self.store._sql(sql), params).rowcount == 1)
            if claimed and then is not None:
                then(connection)
            return claimed

        return self.store._write(upsert)

    def _dead_worker(self, thread_id: str) -> str:
        """The worker holding the thread's claim if it is a process of this host that is gone, else ""."""
        rows = self.store._query("SELECT worker FROM kit_thread_runs WHERE thread_id = ?", (thread_id,))
        worker = rows[0]["worker"] if rows else ""
        return worker if worker and worker_gone(worker) else ""

    def refresh(self, thread_id: str, run_id: str) -> None:
        """The run is alive: its claim stays fresh."""
        sql = "UPDATE kit_thread_runs SET seen = ? WHERE thread_id = ? AND run_id = ?"
        self.store._execute_many(sql, [(time.time(), thread_id, run_id)])

    def release(self, thread_id: str, run_id: str, then: Then | None = None) -> None:
        """The run is over: the thread is free (a claim another run took over is left alone); `then(connection)`
        in the same transaction."""
        self.store._write(lambda connection: self.release_on(connection, thread_id, run_id, then))

    def release_on(self, connection: Any, thread_id: str, run_id: str, then: Then | None = None) -> None:
        """`release` on the caller's transaction (a run's last log write frees its thread in the same commit)."""
        sql = "DELETE FROM kit_thread_runs WHERE thread_id = ? AND run_id = ?"
        connection.execute(self.store._sql(sql), (thread_id, run_id))
        if then is not None:
            then(connection)

    def holder(self, thread_id: str) -> str | None:
        """The run holding the thread (a stale claim counts as none)."""
        sql = "SELECT run_id FROM kit_thread_runs WHERE thread_id = ? AND seen >= ?"
        rows = self.store._query(sql, (thread_id, time.time() - self.stale_s))
        return rows[0]["run_id"] if rows else None


class LocalRunClaims:
    """The same claims in this process only, for an app without a thread store (`thread_store=False`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, str] = {}

    def claim(self, thread_id: str, run_id: str, then: Then | None = None) -> bool:
        with self._lock:
            return self._holders.setdefault(thread_id, run_id) == run_id

    def refresh(self, thread_id: str, run_id: str) -> None:
        """Nothing to refresh: a claim here dies with the process."""

    def release(self, thread_id: str, run_id: str, then: Then | None = None) -> None:
        with self._lock:
            if self._holders.get(thread_id) == run_id:
                del self._holders[thread_id]

    def holder(self, thread_id: str) -> str | None:
        with self._lock:
            return self._holders.get(thread_id)
