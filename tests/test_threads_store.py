"""The thread store on SQLite and on a real PostgreSQL cluster: transcripts, owners, stop requests, outages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.errors import ChatError
from kit.pipeline.cancel import CancelToken
from kit.threads.ids import new_thread_id, validate_thread_id
from kit.threads.stops import SharedStops
from kit.threads.store import PostgresThreadStore, SqliteThreadStore, StoreDown, ThreadStore, open_store
from tests.helpers import bubbles, wait_until
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the session fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadStore]:
    if request.param == "sqlite":
        yield SqliteThreadStore(tmp_path / "threads.sqlite")
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    opened = PostgresThreadStore(cluster.url)
    yield opened
    opened.close()


def test_a_transcript_comes_back_in_order_and_threads_stay_apart(store: ThreadStore) -> None:
    first, second = new_thread_id(), new_thread_id()
    store.append(first, [{"role": "user", "text": "Hi"}, {"role": "ai", "text": "Hello"}])
    store.append(second, [{"role": "user", "text": "Other"}])
    store.append(first, [{"role": "user", "text": "Ünïcode 👍🏽"}, {"role": "steps", "text": "calling x"}])
    assert bubbles(store.messages(first)) == [
        {"role": "user", "text": "Hi"},
        {"role": "ai", "text": "Hello"},
        {"role": "user", "text": "Ünïcode 👍🏽"},
        {"role": "steps", "text": "calling x"},
    ]
    assert bubbles(store.messages(second)) == [{"role": "user", "text": "Other"}]
    assert store.messages(new_thread_id()) == []  # a thread never seen is an empty chat


def test_concurrent_appends_keep_every_message(store: ThreadStore) -> None:
    thread_id = new_thread_id()

    def append(worker: int) -> None:
        for turn in range(10):
            store.append(thread_id, [{"role": "user", "text": f"{worker}-{turn}"}])

    workers = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    texts = [m["text"] for m in store.messages(thread_id)]
    assert sorted(texts) == sorted(f"{w}-{t}" for w in range(4) for t in range(10))
    for worker in range(4):  # each writer's own messages stay in the order it wrote them
        assert [t for t in texts if t.startswith(f"{worker}-")] == [f"{worker}-{t}" for t in range(10)]


def test_the_first_owner_keeps_the_thread(store: ThreadStore) -> None:
    thread_id = new_thread_id()
    assert store.owner(thread_id) is None
    assert store.claim(thread_id, "alice") == "alice"
    assert store.claim(thread_id, "mallory") == "alice"
    assert store.owner(thread_id) == "alice"


def test_a_stop_posted_by_one_process_reaches_the_stream_another_watches(store: ThreadStore) -> None:
    assert store.take_stops([]) == set()
    store.post_stop("stream-aaaaaaaaaaaa")
    assert store.take_stops(["stream-aaaaaaaaaaaa", "stream-bbbbbbbbbbbb"]) == {"stream-aaaaaaaaaaaa"}
    assert store.take_stops(["stream-aaaaaaaaaaaa"]) == set()  # consumed
    here, there = SharedStops(store, poll_s=0.05), SharedStops(store)
    watched, other = CancelToken(), CancelToken()
    here.watch("stream-cccccccccccc", watched)
    here.watch("stream-dddddddddddd", other)
    there.post("stream-cccccccccccc")
    assert watched.wait(5.0)
    assert not other.cancelled


def test_ids_of_the_wrong_shape_are_refused_with_a_400() -> None:
    for bad in ("", "short", "x" * 65, "../../etc/passwd0", "spaces are not ok here", "ünïcode-ünïcode-ü"):
        with pytest.raises(ChatError) as refused:
            validate_thread_id(bad)
        assert refused.value.status == 400 and "16 to 64" in refused.value.message
    assert validate_thread_id("A-b_" * 4) == "A-b_" * 4
    assert len({new_thread_id() for _ in range(100)}) == 100


def test_open_store_reads_urls_and_paths(tmp_path: Path) -> None:
    assert isinstance(open_store("postgresql://kit@127.0.0.1:1/x"), PostgresThreadStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.sqlite"), SqliteThreadStore)
    path_store = open_store(tmp_path / "b.sqlite")
    assert isinstance(path_store, SqliteThreadStore) and path_store.path == tmp_path / "b.sqlite"
    assert open_store(path_store) is path_store
    assert open_store().path.name == "kit-threads.sqlite"  # type: ignore[attr-defined]


def test_a_sqlite_file_that_cannot_be_opened_is_a_503(tmp_path: Path) -> None:
    store = SqliteThreadStore(tmp_path / "gone" / "threads.sqlite")
    with pytest.raises(StoreDown) as down:
        store.messages(new_thread_id())
    assert down.value.status == 503 and "unavailable" in down.value.message and "gone" not in down.value.message


def answers(store: ThreadStore, thread_id: str) -> bool:
    try:
        return bool(store.messages(thread_id))
    except StoreDown:
        return False


def test_a_postgres_outage_is_a_503_and_the_threads_are_intact_after(postgres_cluster: PostgresCluster) -> None:  # noqa: F811
    store = PostgresThreadStore(postgres_cluster.url, timeout_s=1.0)
    thread_id = new_thread_id()
    store.append(thread_id, [{"role": "user", "text": "before"}])
    postgres_cluster.stop()
    try:
        with pytest.raises(StoreDown) as down:
            store.append(thread_id, [{"role": "user", "text": "during"}])
        assert down.value.status == 503 and "127.0.0.1" not in down.value.message
    finally:
        postgres_cluster.start()
    # The pool reconnects on its own, with a back-off of a second or two.
    assert wait_until(lambda: answers(store, thread_id), timeout=15)
    store.append(thread_id, [{"role": "user", "text": "after"}])
    assert [m["text"] for m in store.messages(thread_id)] == ["before", "after"]
    store.close()


def test_langgraphs_checkpointers_open_on_the_same_database(store: ThreadStore) -> None:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    saver = store.checkpointer()
    assert isinstance(saver, BaseCheckpointSaver) and store.checkpointer() is saver
    assert saver.get_tuple({"configurable": {"thread_id": new_thread_id()}}) is None
    store.close()
