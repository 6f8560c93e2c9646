"""A run's event log in the thread store: each reply on a thread is a run whose events (numbered from 1) are
appended as it streams, so a page that reloads, a second tab or another worker process can stream it from any
event on. Kept while the run lives and `keep_s` after it ends. A run whose worker stopped refreshing it (a
crash) is ended in the log by the first reader that notices, with a clear error."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from kit.pipeline.events import EndEvent, ErrorEvent, Event, from_record, to_record
from kit.threads.files import listed
from kit.threads.runs import STALE_S, this_worker, worker_gone
from kit.threads.store import ThreadStore

PRUNE_EVERY_S = 30.0  # ended runs past their keep time are deleted at most this often (by a run that starts)
CRASHED = "The server writing this reply stopped before it ended. Please send your message again."


class RunLog:
    """The runs and their events in one store.

    >>> import os, tempfile
    >>> from kit.pipeline.events import TextEvent, EndEvent
    >>> from kit.threads.store import SqliteThreadStore
    >>> log = RunLog(SqliteThreadStore(os.path.join(tempfile.mkdtemp(), "t.sqlite")))
    >>> log.start("run-1", "thread-0123456789", [{"role": "user", "text": "Hi"}])
    >>> log.append("run-1", [TextEvent(1, "Hel", "ai"), TextEvent(2, "lo")])
    >>> log.running("thread-0123456789")["run_id"], log.events_after("run-1", 1)
    ('run-1', [TextEvent(id=2, text='lo', role=None)])
    >>> log.append("run-1", [EndEvent(3, "finished")]); log.running("thread-0123456789") is None
    True
    """

    def __init__(self, store: ThreadStore, keep_s: float = 600.0, stale_s: float = STALE_S) -> None:
        self.store = store
        self.keep_s = keep_s
        self.stale_s = stale_s
        self._pruned_at = 0.0

    def start(self, run_id: str, thread_id: str, asked: Sequence[dict[str, Any]]) -> None:
        """A new run on the thread, in one transaction of its own (see `begin`)."""
        self.store._write(lambda connection: self.begin(connection, run_id, thread_id, asked))

    def begin(self, connection: Any, run_id: str, thread_id: str, asked: Sequence[dict[str, Any]]) -> None:
        """A new run's rows, on the caller's transaction: the claim of its thread takes it, so that one commit
        claims the thread and starts the run (ended runs past their keep time are forgotten now and then).
        `asked` is the question, the first record of the log (id 0), so a page that reloads mid-reply shows it."""
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            self._prune(connection, now)
        sql = "INSERT INTO kit_runs (run_id, thread_id, worker, started, seen, ended) VALUES (?, ?, ?, ?, ?, NULL)"
        connection.execute(self.store._sql(sql), (run_id, thread_id, this_worker(), now, now))
        # Files are listed without their content (bytes are not JSON; the transcript keeps them once).
        shown = [{**m, "files": listed(m["files"])} if m.get("files") else dict(m) for m in asked]
        self._insert(connection, run_id, [(0, json.dumps({"asked": shown}, ensure_ascii=False))])

    def forget(self, connection: Any, run_id: str) -> None:
        """A run that never started (its source failed to): its rows go, on the caller's transaction."""
        connection.execute(self.store._sql("DELETE FROM kit_run_events WHERE run_id = ?"), (run_id,))
        connection.execute(self.store._sql("DELETE FROM kit_runs WHERE run_id = ?"), (run_id,))

    def append(self, run_id: str, events: Sequence[Event], then: Callable[[Any], None] | None = None) -> None:
        """Add events at the end of the run's log (heartbeats are not kept), one commit; an end event ends the
        run. `then(connection)` joins the same transaction (the end of a run frees its thread in it)."""
        rows = [(event.id, json.dumps(to_record(event), ensure_ascii=False)) for event in events if to_record(event)]
        now = time.time()
        ended = now if any(isinstance(event, EndEvent) for event in events) else None
        sql = "UPDATE kit_runs SET seen = ?, ended = COALESCE(ended, ?) WHERE run_id = ?"

        def write(connection: Any) -> None:
            self._insert(connection, run_id, rows)
            connection.execute(self.store._sql(sql), (now, ended, run_id))
            if then is not None:
                then(connection)

        self.store._write(write)

    def events_after(self, run_id: str, after: int) -> list[Event]:
        """The run's events with an id above `after`, in order."""
        sql = "SELECT id, body FROM kit_run_events WHERE run_id = ? AND id > ? ORDER BY id"
        rows = self.store._query(sql, (run_id, max(after, 0)))
        return [from_record(row["id"], json.loads(row["body"])) for row in rows]

    def asked(self, run_id: str) -> list[dict[str, Any]]:
        """The question the run answers (what its page showed as the user's bubble)."""
        rows = self.store._query("SELECT body FROM kit_run_events WHERE run_id = ? AND id = 0", (run_id,))
        return list(json.loads(rows[0]["body"]).get("asked", [])) if rows else []

    def running(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's latest run if it has not ended (`run_id`, `seen`, `ended`)."""
        latest = self.latest(thread_id)
        return latest if latest is not None and latest["ended"] is None else None

    def latest(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's latest run still in the log, running or ended (`run_id`, `seen`, `ended`)."""
        sql = "SELECT run_id, seen, ended FROM kit_runs WHERE thread_id = ? ORDER BY started DESC LIMIT 1"
        rows = self.store._query(sql, (thread_id,))
        return dict(rows[0]) if rows else None

    def state(self, run_id: str) -> dict[str, Any] | None:
        """`thread_id`, `worker`, `seen` and `ended` (None while running) of a run; None for an unknown run."""
        rows = self.store._query("SELECT thread_id, worker, seen, ended FROM kit_runs WHERE run_id = ?", (run_id,))
        return dict(rows[0]) if rows else None

    def end_if_crashed(self, run_id: str, quiet_s: float) -> bool:
        """End a run whose worker is gone (a process of this host that no longer exists) or, elsewhere, stopped
        refreshing it while its reader has waited `quiet_s` with nothing new, with an error and an end after its
        last event; True when the run is over (now or before)."""
        state = self.state(run_id)
        if state is None or state["ended"] is not None:
            return True
        # A run nobody else read may not have written its log yet: stale only when its reader, too, has waited.
        stale = time.time() - state["seen"] >= self.stale_s and quiet_s >= self.stale_s
        if not (stale or worker_gone(state["worker"])):
            return False
        rows = self.store._query("SELECT MAX(id) AS last FROM kit_run_events WHERE run_id = ?", (run_id,))
        last = int(rows[0]["last"] or 0)
        self.append(run_id, [ErrorEvent(last + 1, CRASHED), EndEvent(last + 2, "failed")])
        return True

    def touch(self, run_id: str) -> None:
        """The run is alive (its worker says so between appends)."""
        self.store._execute_many("UPDATE kit_runs SET seen = ? WHERE run_id = ?", [(time.time(), run_id)])

    def mark_read(self, run_id: str) -> None:
        """Someone follows the run from the log (on another worker): it is not abandoned."""
        self.store._execute_many("UPDATE kit_runs SET read_at = ? WHERE run_id = ?", [(time.time(), run_id)])

    def read_since(self, run_id: str) -> float | None:
        """When a reader on another worker last followed the run (time.time()), if ever."""
        rows = self.store._query("SELECT read_at FROM kit_runs WHERE run_id = ?", (run_id,))
        return rows[0]["read_at"] if rows else None

    def _insert(self, connection: Any, run_id: str, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            sql = "INSERT INTO kit_run_events (run_id, id, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            connection.cursor().executemany(self.store._sql(sql), [(run_id, event_id, body) for event_id, body in rows])

    def _prune(self, connection: Any, now: float) -> None:
        old = "SELECT run_id FROM kit_runs WHERE ended IS NOT NULL AND ended < ?"
        before = (now - self.keep_s,)
        connection.execute(self.store._sql(f"DELETE FROM kit_run_events WHERE run_id IN ({old})"), before)
        connection.execute(self.store._sql("DELETE FROM kit_runs WHERE ended IS NOT NULL AND ended < ?"), before)
