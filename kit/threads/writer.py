"""Group commit for a SQLite file: this process's writes to it go through one writer thread, which runs every write
waiting at that moment in one transaction (each in a savepoint of its own, so one that fails fails alone) and
commits them together.

SQLite has one writer at a time. A thousand conversations starting at once, each writing on its own connection,
poll the file's lock with sleeps, and some starve past the busy timeout ("database is locked"); taking turns on a
lock of this process instead makes each turn wait for the interpreter's lock again at every step. One writer that
commits a whole queue at a time does each turn's work in one go: many runs' writes per commit. Writers in other
processes on the same file still wait on SQLite's busy timeout, a few at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Connect = Callable[[], sqlite3.Connection]
MAX_BATCH = 512  # writes per commit at most: a commit's latency stays bounded under any load


class _Write(Generic[T]):
    def __init__(self, work: Callable[[sqlite3.Connection], T]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False  # its caller stopped waiting: not run if not begun


class GroupWriter:
    """The writer thread of one SQLite file in this process.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "w.sqlite")
    >>> writer = GroupWriter(lambda: sqlite3.connect(path))
    >>> writer.write(lambda connection: connection.execute("CREATE TABLE t (x)").rowcount)
    -1
    >>> writer.write(lambda connection: connection.execute("INSERT INTO t VALUES (1)").rowcount), writer.commits
    (1, 2)
    """

    def __init__(self, connect: Connect, *, wait_s: float = 30.0) -> None:
        self.connect = connect
        self.wait_s = wait_s
        self.commits = 0  # transactions committed (a figure: how many writes shared each commit)
        self.writes = 0
        self._queue: list[_Write[Any]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the writer's connection inside a transaction and return its result once committed;
        its sqlite3.Error (or the commit's) is raised here. No turn within `wait_s`: sqlite3.OperationalError."""
        item: _Write[T] = _Write(work)
        with self._wake:
            self._start()
            self._queue.append(item)
            self._wake.notify()
        if not item.done.wait(self.wait_s):
            with self._wake:
                item.abandoned = item in self._queue
            if item.abandoned or not item.done.wait(self.wait_s):
                raise sqlite3.OperationalError(f"no turn to write within {self.wait_s:g} s")
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def _start(self) -> None:
        # After a fork (gunicorn's workers) the parent's thread is not in the child: each process starts its own.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._queue = []
            self._thread = threading.Thread(target=self._run, name="kit-sqlite-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                batch = [item for item in self._queue[:MAX_BATCH] if not item.abandoned]
                del self._queue[:MAX_BATCH]
            connection: sqlite3.Connection | None = None
            try:
                # A connection per batch, not one kept: the file is opened by its path each time (a store whose
                # file went away fails, as it would for a reader), at one open per many writes under load.
                connection = self.connect()
                connection.isolation_level = None  # transactions by hand: BEGIN IMMEDIATE, a savepoint per write
                self._commit(connection, batch)
            except BaseException as error:  # never leave a caller waiting, whatever went wrong
                if isinstance(error, sqlite3.Error):
                    log.warning("a batch of %d writes failed: %s", len(batch), error)
                for item in batch:
                    item.error = item.error or error
            finally:
                _close(connection)
            for item in batch:
                item.done.set()

    def _commit(self, connection: sqlite3.Connection, batch: list[_Write[Any]]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                connection.execute("SAVEPOINT kit_write")
                try:
                    item.result = item.work(connection)
                except Exception as error:  # this write fails alone
                    item.error = error
                    connection.execute("ROLLBACK TO kit_write")
                connection.execute("RELEASE kit_write")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self.commits += 1
        self.writes += len(batch)


def _close(connection: sqlite3.Connection | None) -> None:
    if connection is not None:
        with contextlib.suppress(sqlite3.Error):
            connection.close()


_writers: dict[Path, GroupWriter] = {}
_writers_lock = threading.Lock()


def writer_for(path: Path, connect: Connect) -> GroupWriter:
    """The writer of this file in this process (every store object on the file shares it)."""
    with _writers_lock:
        return _writers.setdefault(path, GroupWriter(connect))
