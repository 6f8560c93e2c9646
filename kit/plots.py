"""Matplotlib figures of inspected streams, for the notebooks: the event timeline and the bytes sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kit.inspector import StreamRecord

_STYLE = {
    "piece": ("source pieces", "#999999"),
    "text": ("events sent", "#1f77b4"),
    "heartbeat": ("heartbeats", "#2ca02c"),
    "error": ("error", "#d62728"),
}


def plot_streams(streams: Mapping[str, StreamRecord], title: str = "") -> Any:
    """A figure with, per stream, its timeline (a tick per source piece, per event, per heartbeat) on top
    and the cumulative bytes it sent below. Returns a matplotlib Figure (displayed inline by Jupyter).

    >>> from kit.inspector import StreamRecord
    >>> record = StreamRecord([])
    >>> record.piece(5, record.started + 0.01); record.write("text", 20, record.started + 0.01)
    >>> record.end("finished", record.started + 0.02)
    >>> len(plot_streams({"demo": record}).axes)
    2
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, nothing left open

    figure = Figure(figsize=(9, 1.1 + 1.0 * len(streams) + 2.2), layout="constrained")
    timeline, sent = figure.subplots(2, 1, sharex=True, height_ratios=[len(streams) + 0.6, 2.2])
    shown: set[str] = set()
    for row, (name, record) in enumerate(streams.items()):
        marks = list(record.marks)
        for offset, kind in ((0.25, "piece"), (0.0, "text"), (-0.25, "heartbeat"), (0.0, "error")):
            times = [mark.at for mark in marks if mark.kind == kind]
            if not times:
                continue
            label, colour = _STYLE[kind]
            y = -row + offset
            timeline.vlines(times, y - 0.1, y + 0.1, colors=colour, label=None if label in shown else label)
            shown.add(label)
        writes = [mark for mark in marks if mark.kind != "piece"]
        total, xs, ys = 0, [0.0], [0]
        for mark in writes:
            total += mark.size
            xs.append(mark.at)
            ys.append(total)
        sent.step(xs, ys, where="post", label=f"{name}: {total:,} bytes in {record.stats.events} events")
    timeline.set_yticks([-row for row in range(len(streams))], list(streams))
    timeline.legend(loc="upper right", fontsize="small", ncols=4)
    timeline.set_title(title or "What each stream did, and when")
    sent.set_ylabel("bytes sent")
    sent.set_xlabel("seconds since the request started")
    sent.legend(loc="lower right", fontsize="small")
    return figure
