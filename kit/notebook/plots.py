"""Matplotlib figures of inspected streams, for the notebooks: the event timeline and the bytes sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kit.notebook.inspector import THOUGHT_COLOUR, StreamRecord

_STYLE = {
    "piece": ("source pieces", "#999999"),
    "thought": ("thinking pieces", THOUGHT_COLOUR),
    "text": ("events sent", "#1f77b4"),
    "heartbeat": ("heartbeats", "#2ca02c"),
    "error": ("error", "#d62728"),
}


_WRITES = ("text", "heartbeat", "error")


def _mark_phases(axes: Any, record: StreamRecord, row: int) -> None:
    """Time to first thought and time to the answer's first text, for a stream that thought."""
    stats = record.stats
    if stats.first_thought_s is None:
        return
    for at, name in ((stats.first_thought_s, "think"), (stats.first_answer_s, "answer")):
        if at is not None:
            axes.annotate(f"{name} {at * 1000:.0f} ms", (at, -row + 0.36), fontsize="x-small", ha="left")
            axes.vlines([at], -row - 0.4, -row + 0.34, colors="#555555", linestyles="dotted")


def plot_streams(streams: Mapping[str, StreamRecord], title: str = "") -> Any:
    """A figure with, per stream, its timeline (a tick per source piece, per event, per heartbeat) on top
    and the cumulative bytes it sent below. Returns a matplotlib Figure (displayed inline by Jupyter).
    A reasoning model's thinking pieces have a colour of their own, and a stream that thought is marked
    with its time to first thought ("think") and its time to the first text of its answer ("answer").

    >>> from kit.notebook.inspector import StreamRecord
    >>> record = StreamRecord([])
    >>> record.piece(5, record.started + 0.01); record.write("text", 20, record.started + 0.01)
    >>> record.end("finished", record.started + 0.02)
    >>> len(plot_streams({"demo": record}).axes)
    2
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, nothing left open

    figure = Figure(figsize=(9, 1.4 + 1.0 * len(streams) + 2.2), layout="constrained")
    figure.suptitle(title or "What each stream did, and when", x=0.02, ha="left")
    timeline, sent = figure.subplots(2, 1, sharex=True, height_ratios=[len(streams) + 0.6, 2.2])
    writes = [mark.size for record in streams.values() for mark in record.marks if mark.kind in _WRITES]
    biggest = max(writes, default=1)
    shown: set[str] = set()
    for row, (name, record) in enumerate(streams.items()):
        marks = list(record.marks)
        for offset, kind in (
            (0.22, "piece"), (0.22, "thought"), (-0.12, "text"), (-0.12, "error"), (-0.32, "heartbeat")
        ):  # fmt: skip
            chosen = [mark for mark in marks if mark.kind == kind]
            if not chosen:
                continue
            label, colour = _STYLE[kind]
            base = -row + offset - 0.08
            # An event's tick grows with the bytes it carried; pieces and heartbeats have a fixed height.
            tops = [base + (0.08 + 0.3 * mark.size / biggest if kind == "text" else 0.16) for mark in chosen]
            times = [mark.at for mark in chosen]
            timeline.vlines(times, base, tops, colors=colour, label=None if label in shown else label)
            shown.add(label)
        _mark_phases(timeline, record, row)
        total, xs, ys = 0, [0.0], [0]
        for mark in marks:
            if mark.kind in _WRITES:
                total += mark.size
                xs.append(mark.at)
                ys.append(total)
        sent.step(xs, ys, where="post", label=f"{name}: {total:,} bytes in {record.stats.events} events")
    timeline.set_yticks([-row for row in range(len(streams))], list(streams))
    timeline.set_ylim(-len(streams) + 0.5, 0.5)
    timeline.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize="small", ncols=4, frameon=False)
    sent.set_ylabel("bytes sent")
    sent.set_xlabel("seconds since the request started")
    sent.legend(loc="upper left", fontsize="small")
    return figure
