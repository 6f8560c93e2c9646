"""The pump's bounded hand-off: a producer that runs ahead of its consumer stops at the bound, goes on as soon as
the consumer takes, and cancels itself when the consumer reads nothing for `stall_timeout_s`."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator

import pytest

from kit.pipeline.cancel import CancelToken
from kit.pipeline.outbox import Outbox
from kit.pipeline.pump import TIMEOUT, Failed, Finished, Pump, receive_grouped
from tests.helpers import wait_until


class Counting:
    """An endless source that counts what it has made (a scripted fake)."""

    def __init__(self) -> None:
        self.made = 0

    def __iter__(self) -> Iterator[str]:
        for index in itertools.count():
            self.made += 1
            yield str(index)


def test_the_producer_stops_at_the_bound_and_goes_on_when_the_consumer_takes() -> None:
    source = Counting()
    pump = Pump(source, CancelToken(), queue_size=4, poll_s=5.0).start()
    try:
        assert wait_until(lambda: source.made == 5, timeout=5)  # 4 queued, the 5th waits for room
        assert not wait_until(lambda: source.made > 5, timeout=0.2)
        assert [pump.get(1.0) for _ in range(4)] == ["0", "1", "2", "3"]
        # The taking wakes the producer at once, not at its next poll (5 s away).
        assert wait_until(lambda: source.made == 9, timeout=2)
        assert [pump.get(1.0) for _ in range(8)] == [str(index) for index in range(4, 12)]
    finally:
        pump.close()
    assert pump.join(5)


def test_a_consumer_that_reads_nothing_cancels_the_producer_after_the_stall_timeout() -> None:
    source, cancel = Counting(), CancelToken()
    pump = Pump(source, cancel, queue_size=2, stall_timeout_s=0.3, poll_s=0.05).start()
    assert cancel.wait(5) and pump.join(5) and source.made == 3
    assert [pump.get(0.1) for _ in range(3)] == ["0", "1", TIMEOUT]  # what was queued is still there


def test_a_finite_source_ends_with_finished() -> None:
    pump = Pump(iter(["a", "b"]), CancelToken(), queue_size=1).start()
    assert [pump.get(5.0) for _ in range(3)] == ["a", "b", Finished()]


def test_grouped_receiving_sends_after_a_quiet_spell_at_once_and_loses_nothing_before_an_error() -> None:
    items = Outbox(held=lambda item: isinstance(item, str))
    groups = receive_grouped(items, CancelToken(), window_s=0.2, poll_s=0.01)
    items.put("a")
    assert next(groups) == ["a"]  # nothing came before it: at once
    items.put("b")
    items.put("c")
    started = time.monotonic()
    assert next(groups) == ["b", "c"] and time.monotonic() - started >= 0.1  # held to the window's end
    time.sleep(0.45)  # a quiet spell longer than the window
    items.put("d")
    started = time.monotonic()
    assert next(groups) == ["d"] and time.monotonic() - started < 0.1
    items.put("e")
    items.put(Failed(ValueError("cut")))
    assert next(groups) == ["e"]
    with pytest.raises(ValueError, match="cut"):
        next(groups)


def test_grouped_receiving_sends_an_urgent_item_at_once_with_the_text_held_before_it() -> None:
    items = Outbox(held=lambda item: isinstance(item, str))
    groups = receive_grouped(items, CancelToken(), window_s=30, poll_s=0.01)
    items.put("a")
    assert next(groups) == ["a"]
    items.put("b")
    threading.Timer(0.05, items.put, args=[1]).start()  # an end, while "b" waits out a 30 s window
    started = time.monotonic()
    assert next(groups) == ["b", 1] and time.monotonic() - started < 5


def test_grouped_receiving_of_a_fast_stream_wakes_once_a_window_not_once_an_item() -> None:
    """Text every 2 ms with a 50 ms window: the reader sleeps each window through (counted: its waits)."""
    items = CountingOutbox(held=lambda item: isinstance(item, str))
    groups = receive_grouped(items, CancelToken(), window_s=0.05, poll_s=1.0)

    def produce() -> None:
        for index in range(100):
            items.put(str(index))
            time.sleep(0.002)
        items.put(Finished())

    threading.Thread(target=produce).start()
    received = list(groups)
    assert [item for group in received for item in group] == [str(index) for index in range(100)]
    assert len(received) < 25  # about 200 ms or more of text in 50 ms windows; one per item without joining
    assert items.waits < 2 * len(received) + 2  # one wait a group (and a last one), not one per item


def test_grouped_text_goes_with_the_first_item_after_the_window_not_at_a_timer() -> None:
    items = Outbox(held=lambda item: isinstance(item, str))
    groups = receive_grouped(items, CancelToken(), window_s=1.0, poll_s=5.0)
    items.put("a")
    started = time.monotonic()
    assert next(groups) == ["a"]
    items.put("b")  # within the window: it waits
    threading.Timer(1.2, items.put, args=["c"]).start()  # after the window's end, before the timer's (2 s)
    assert next(groups) == ["b", "c"] and 1.1 < time.monotonic() - started < 1.8


class CountingOutbox(Outbox):
    """An Outbox that counts its reader's waits (get and collect)."""

    waits = 0

    def get(self, timeout: float | None = None) -> object:
        self.waits += 1
        return super().get(timeout)

    def collect(self, timeout: float, wake_after: float = math.inf) -> list[object]:
        self.waits += 1
        return super().collect(timeout, wake_after)


def test_grouped_receiving_ends_when_cancelled_and_nothing_is_left() -> None:
    cancel = CancelToken()
    items = Outbox(held=lambda item: isinstance(item, str))
    items.put("a")
    groups = receive_grouped(items, cancel, window_s=0.05, poll_s=0.01)
    assert next(groups) == ["a"]
    cancel.cancel()
    assert list(groups) == []
