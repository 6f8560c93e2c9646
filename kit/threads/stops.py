"""Stop requests across worker processes: a stop posted to any worker reaches the stream on another, through the
thread store (no new service). Each process polls the store for the streams it serves, only while it has any."""

from __future__ import annotations

import logging
import threading
import weakref

from kit.errors import ChatError
from kit.pipeline.cancel import CancelToken
from kit.threads.store import ThreadStore

log = logging.getLogger(__name__)

POLL_S = 0.25  # the delay a stop posted on another worker may add, at one small query per poll per process


class SharedStops:
    """The streams of this process that a stop posted elsewhere may end, and the poller that ends them.

    >>> import os, tempfile
    >>> from kit.threads.store import SqliteThreadStore
    >>> store = SqliteThreadStore(os.path.join(tempfile.mkdtemp(), "t.sqlite"))
    >>> here, elsewhere, token = SharedStops(store), SharedStops(store), CancelToken()
    >>> here.watch("0123456789abcdef", token)
    >>> elsewhere.post("0123456789abcdef")
    >>> token.wait(5.0)
    True
    """

    def __init__(self, store: ThreadStore, poll_s: float = POLL_S) -> None:
        self.store = store
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: weakref.WeakValueDictionary[str, CancelToken] = weakref.WeakValueDictionary()
        self._wake = threading.Condition(self._lock)
        self._poller: threading.Thread | None = None

    def post(self, stream_id: str) -> None:
        """Record a stop for a stream this process does not serve (raises StoreDown, a 503, if it cannot)."""
        self.store.post_stop(stream_id)

    def watch(self, stream_id: str, cancel: CancelToken) -> None:
        """Cancel `cancel` when a stop for `stream_id` is posted anywhere; held weakly, like the stream."""
        with self._lock:
            self._watched[stream_id] = cancel
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll, name="kit-shared-stops", daemon=True)
                self._poller.start()
            self._wake.notify()

    def _poll(self) -> None:
        while True:
            with self._lock:
                while not self._live_ids():
                    self._wake.wait()  # no stream to watch: no query at all
                ids = self._live_ids()
            try:
                stopped = self.store.take_stops(ids)
            except ChatError:
                stopped = set()  # the store is down: logged by the store; local Stop still works
            for stream_id in stopped:
                with self._lock:
                    cancel = self._watched.pop(stream_id, None)
                if cancel is not None:
                    log.info("stop request for stream %s from another worker", stream_id)
                    cancel.cancel()
            with self._lock:
                self._wake.wait(self.poll_s)

    def _live_ids(self) -> list[str]:
        return [stream_id for stream_id, cancel in self._watched.items() if not cancel.cancelled]
