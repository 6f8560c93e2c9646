import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.pipeline.coalesce import Coalescer


def run(coalescer: Coalescer, arrivals: list[tuple[float, str]]) -> list[str]:
    """Drive a coalescer as the response loop does: flush at deadlines between arrivals, and at the end."""
    events: list[str] = []
    for now, piece in arrivals:
        deadline = coalescer.deadline()
        if deadline is not None and deadline <= now:
            events.append(coalescer.flush(deadline) or "")
        event = coalescer.add(piece, now)
        if event is not None:
            events.append(event)
    tail = coalescer.flush()
    if tail is not None:
        events.append(tail)
    return events


def test_first_piece_after_quiet_goes_out_at_once_then_fast_ones_merge() -> None:
    events = run(Coalescer(0.05, 1000), [(0.0, "a"), (0.01, "b"), (0.02, "c"), (0.2, "d")])
    assert events == ["a", "bc", "d"]


def test_window_zero_is_one_event_per_piece() -> None:
    assert run(Coalescer(0, 1000), [(0.0, "a"), (0.0, "b"), (0.0, "c")]) == ["a", "b", "c"]


def test_size_cap_flushes_early() -> None:
    events = run(Coalescer(10.0, 4), [(0.0, "a"), *((0.001 * i, "xy") for i in range(1, 6))])
    assert events == ["a", "xyxy", "xyxy", "xy"]


@pytest.mark.parametrize(("window", "cap"), [(-1, 10), (0.1, 0)])
def test_bad_settings_are_refused(window: float, cap: int) -> None:
    with pytest.raises(ValueError):
        Coalescer(window, cap)


@given(
    pieces=st.lists(st.text(min_size=1, max_size=10), max_size=60),
    gaps=st.lists(st.floats(min_value=0, max_value=0.2), min_size=60, max_size=60),
    window=st.sampled_from([0.0, 0.001, 0.025, 0.1]),
    cap=st.integers(min_value=1, max_value=50),
)
def test_any_timing_keeps_every_character_in_order(
    pieces: list[str], gaps: list[float], window: float, cap: int
) -> None:
    now, arrivals = 0.0, []
    for piece, gap in zip(pieces, gaps, strict=False):
        now += gap
        arrivals.append((now, piece))
    events = run(Coalescer(window, cap), arrivals)
    assert "".join(events) == "".join(pieces)
    assert all(events)
    assert len(events) <= len(pieces)
