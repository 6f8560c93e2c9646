"""The pump's bounded hand-off: a producer that runs ahead of its consumer stops at the bound, goes on as soon as
the consumer takes, and cancels itself when the consumer reads nothing for `stall_timeout_s`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from kit.pipeline.cancel import CancelToken
from kit.pipeline.pump import TIMEOUT, Finished, Pump
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
