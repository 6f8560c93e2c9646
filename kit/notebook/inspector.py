"""A live stream inspector: per-request timings, counts and event timeline, in Python and as a widget."""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from flask import Flask

from kit.pipeline.observe import EndReason, StreamObserver, WriteKind
from kit.pipeline.sources import ANSWER_ROLE, THINKING_ROLE
from kit.pipeline.usage import Usage
from kit.web.observers import add_observer

MarkKind = Literal["piece", "thought", "text", "heartbeat", "error"]
PIECE_KINDS: tuple[MarkKind, ...] = ("piece", "thought")  # marks of what the source yielded, not of writes


class Mark(NamedTuple):
    """One thing that happened in a stream: a piece from the source (size in characters; a "thought" when it
    is a reasoning model's thinking) or a write to the client (size in bytes), `at` seconds after the request
    started; `role` is the role of a piece ("ai" for the answer, "thinking", "steps", ...)."""

    kind: MarkKind
    at: float
    size: int
    role: str = ANSWER_ROLE


@dataclass(frozen=True)
class StreamStats:
    """The numbers of one stream, so far or final. Times are seconds since the request started."""

    pieces: int  # from the source, after granularity, before coalescing (thinking included)
    chars: int
    thoughts: int  # pieces of a reasoning model's thinking (shown, hidden or inline)
    events: int  # text events written to the client
    bytes: int  # everything written: text events, heartbeats, the error
    heartbeats: int
    errors: int
    first_piece_s: float | None
    first_thought_s: float | None  # time to first thought
    first_answer_s: float | None  # time to the first text of the answer (not thinking, not steps)
    first_event_s: float | None
    duration_s: float  # to the end, or to now while streaming
    pieces_per_s: float  # pieces over the time from the request's start to its last piece
    end: EndReason | None  # None while streaming
    input_tokens: int | None = None  # the token usage the source reported (None: not reported, or not yet)
    output_tokens: int | None = None


class StreamRecord(StreamObserver):
    """What one request's stream did; filled in from the serving thread, read from anywhere."""

    def __init__(self, messages: list[dict[str, object]], on_change: Any = None) -> None:
        self.messages = messages
        self.started = time.perf_counter()
        self.marks: list[Mark] = []  # appended by one thread only; list.append is atomic
        self.end_reason: EndReason | None = None
        self.token_usage = Usage()  # what the source reported, once the stream ends
        self._role = ANSWER_ROLE  # the role of the pieces arriving now
        self._ended_at: float | None = None
        self._done = threading.Event()
        self._on_change = on_change

    @property
    def prompt(self) -> str:
        """The last user message, the one this stream answers."""
        users = [message for message in self.messages if message.get("role") == "user"]
        return str(users[-1].get("text", "")) if users else ""

    # StreamObserver: called in the serving thread, so each does only an append.
    def piece(self, chars: int, at: float) -> None:
        kind: MarkKind = "thought" if self._role == THINKING_ROLE else "piece"
        self.marks.append(Mark(kind, at - self.started, chars, self._role))
        self._changed(final=False)

    def role(self, name: str, at: float) -> None:
        self._role = name

    def write(self, kind: WriteKind, nbytes: int, at: float) -> None:
        self.marks.append(Mark(kind, at - self.started, nbytes))
        self._changed(final=False)

    def usage(self, usage: Usage, at: float) -> None:
        self.token_usage = usage

    def end(self, reason: EndReason, at: float) -> None:
        self._ended_at = at
        self.end_reason = reason
        self._done.set()
        self._changed(final=True)

    def _changed(self, final: bool) -> None:
        if self._on_change is not None:
            self._on_change(final)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block until the stream ended; False on timeout."""
        return self._done.wait(timeout_s)

    @property
    def stats(self) -> StreamStats:
        marks = list(self.marks)
        pieces = [mark for mark in marks if mark.kind in PIECE_KINDS]
        thoughts = [mark for mark in pieces if mark.kind == "thought"]
        answers = [mark for mark in pieces if mark.role == ANSWER_ROLE]
        texts = [mark for mark in marks if mark.kind == "text"]
        end = self._ended_at if self._ended_at is not None else time.perf_counter()
        last_piece = pieces[-1].at if pieces else 0.0
        return StreamStats(
            pieces=len(pieces),
            chars=sum(mark.size for mark in pieces),
            thoughts=len(thoughts),
            events=len(texts),
            bytes=sum(mark.size for mark in marks if mark.kind not in PIECE_KINDS),
            heartbeats=sum(mark.kind == "heartbeat" for mark in marks),
            errors=sum(mark.kind == "error" for mark in marks),
            first_piece_s=pieces[0].at if pieces else None,
            first_thought_s=thoughts[0].at if thoughts else None,
            first_answer_s=answers[0].at if answers else None,
            first_event_s=texts[0].at if texts else None,
            duration_s=end - self.started,
            pieces_per_s=len(pieces) / last_piece if last_piece > 0 else 0.0,
            end=self.end_reason,
            input_tokens=self.token_usage.input_tokens,
            output_tokens=self.token_usage.output_tokens,
        )


class Inspector:
    """Watches every stream an app serves from now on.

    >>> from kit import create_app
    >>> from kit.serving.client import stream_chat
    >>> from kit.serving.server import BackgroundServer
    >>> app = create_app(lambda messages: ["a", "b", "c"], coalesce_ms=0)
    >>> inspector = Inspector(app)
    >>> with BackgroundServer(app) as server:
    ...     stream_chat(server.url + "chat-stream", "hi").text
    'abc'
    >>> stats = inspector.wait().stats
    >>> stats.pieces, stats.events, stats.end
    (3, 3, 'finished')
    >>> usage = {"prompt_tokens": 4, "completion_tokens": 1}
    >>> app = create_app(lambda messages: [{"choices": [{"delta": {"content": "Hi"}}], "usage": usage}])
    >>> inspector = Inspector(app)
    >>> with BackgroundServer(app) as server:
    ...     stream_chat(server.url + "chat-stream", "hi").events[-1]
    {'usage': {'input_tokens': 4, 'output_tokens': 1}}
    >>> stats = inspector.wait().stats
    >>> stats.input_tokens, stats.output_tokens
    (4, 1)
    """

    def __init__(self, app: Flask, *, keep: int = 50, refresh_s: float = 0.2) -> None:
        self.streams: list[StreamRecord] = []
        self._keep = keep
        self._refresh_s = refresh_s
        self._render_lock = threading.Lock()
        self._last_render = 0.0
        self._views: list[_View] = []
        self._new_stream = threading.Condition()
        self._detach = add_observer(app, self._observe)

    def _observe(self, messages: list[dict[str, object]]) -> StreamRecord:
        record = StreamRecord(messages, on_change=self._changed)
        with self._new_stream:
            self.streams.append(record)
            del self.streams[: -self._keep]
            self._new_stream.notify_all()
        self._changed(final=True)
        return record

    def detach(self) -> None:
        """Stop watching new streams."""
        self._detach()

    def clear(self) -> None:
        """Forget the streams seen so far."""
        with self._new_stream:
            self.streams.clear()
        self._changed(final=True)

    def wait(self, count: int = 1, timeout_s: float = 10.0) -> StreamRecord:
        """Wait until at least `count` streams were seen and the latest has ended; returns the latest."""
        deadline = time.monotonic() + timeout_s
        with self._new_stream:
            if not self._new_stream.wait_for(lambda: len(self.streams) >= count, timeout_s):
                raise TimeoutError(f"saw {len(self.streams)} streams, not {count}, within {timeout_s} s")
            latest = self.streams[-1]
        if not latest.wait(max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"the latest stream did not end within {timeout_s} s")
        return latest

    def widget(self) -> Any:
        """A live view: a table of recent streams and the timeline of the latest, updated as it streams."""
        view = _View()
        self._views.append(view)
        view.update(list(self.streams))
        return view.box

    def _changed(self, final: bool) -> None:
        # Called from serving threads: render at most every refresh_s, but always at a stream's end.
        if not self._views:
            return
        now = time.perf_counter()
        if not final and now - self._last_render < self._refresh_s:
            return
        with self._render_lock:
            self._last_render = now
            streams = list(self.streams)
            for view in self._views:
                view.update(streams)


# The live view draws SVG by hand: a few hundred elements cost well under a millisecond in the serving
# thread, where a matplotlib redraw would cost tens and slow the very stream it measures.
_WIDTH, _ROW, _LEFT = 560, 26, 90
THOUGHT_COLOUR = "#9467bd"  # a reasoning model's thinking, in the timeline and in plot_streams
_ROWS: tuple[tuple[str, tuple[MarkKind, ...], str], ...] = (
    ("source pieces", PIECE_KINDS, "#999"),
    ("events sent", ("text", "error"), "#1f77b4"),
    ("heartbeats", ("heartbeat",), "#2ca02c"),
)


_FILLS = {"error": "#d62728", "thought": THOUGHT_COLOUR}


def timeline_svg(record: StreamRecord) -> str:
    """The stream's timeline as SVG: one row per kind, a tick per mark (event ticks scale with bytes)."""
    marks = list(record.marks)
    span = max(record.stats.duration_s, 1e-3)
    scale = (_WIDTH - _LEFT - 10) / span
    biggest = max((mark.size for mark in marks if mark.kind not in PIECE_KINDS), default=1)
    height = _ROW * 3 + 22
    # A viewBox lets the drawing shrink to the width the widget gets, labels included.
    parts = [f'<svg viewBox="0 0 {_WIDTH} {height}" width="100%" style="max-width: {_WIDTH}px; font: 11px sans-serif">']
    for row, (label, kinds, colour) in enumerate(_ROWS):
        y = row * _ROW + 4
        parts.append(f'<text x="0" y="{y + 15}">{label}</text>')
        seen: set[int] = set()  # one tick per pixel column keeps the SVG small for long streams
        for mark in marks:
            if mark.kind not in kinds:
                continue
            x = _LEFT + int(mark.at * scale)
            if x in seen:
                continue
            seen.add(x)
            height = 20 if mark.kind in PIECE_KINDS else max(3, round(20 * mark.size / biggest))
            fill = _FILLS.get(mark.kind, colour)
            parts.append(f'<rect x="{x}" y="{y + 20 - height}" width="1.5" height="{height}" fill="{fill}"/>')
    parts.append(f'<text x="{_LEFT}" y="{_ROW * 3 + 18}">0 s</text>')
    parts.append(f'<text x="{_WIDTH - 60}" y="{_ROW * 3 + 18}">{span:.2f} s</text></svg>')
    return "".join(parts)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _tokens(stats: StreamStats) -> str:
    if stats.input_tokens is None and stats.output_tokens is None:
        return "-"
    return " / ".join("?" if count is None else str(count) for count in (stats.input_tokens, stats.output_tokens))


def stats_table(streams: list[StreamRecord], rows: int = 8) -> str:
    """An HTML table of the latest streams' numbers."""
    head = "".join(
        f'<th title="{why}">{name}</th>'
        for name, why in (
            ("#", "request number"),
            ("prompt", "the user's last message"),
            ("1st ms", "time to the first piece from the source, ms"),
            ("think ms", "time to first thought: the first piece of a reasoning model's thinking, ms"),
            ("answer ms", "time to the first text of the answer, ms"),
            ("pieces", "pieces from the source"),
            ("/s", "pieces per second"),
            ("events", "text events sent"),
            ("bytes", "bytes sent: events, heartbeats, error"),
            ("beats", "heartbeats sent"),
            ("tokens", "tokens in / out, as the source reported them"),
            ("s", "duration, seconds"),
            ("end", "how the stream ended"),
        )
    )
    body = []
    first = max(len(streams) - rows, 0)
    for number, record in enumerate(streams[first:], start=first + 1):
        s = record.stats
        body.append(
            f"<tr><td>{number}</td><td>{html.escape(record.prompt[:16])}</td><td>{_ms(s.first_piece_s)}</td>"
            f"<td>{_ms(s.first_thought_s)}</td><td>{_ms(s.first_answer_s)}</td>"
            f"<td>{s.pieces}</td><td>{s.pieces_per_s:.0f}</td><td>{s.events}</td><td>{s.bytes}</td>"
            f"<td>{s.heartbeats}</td><td>{_tokens(s)}</td><td>{s.duration_s:.2f}</td>"
            f"<td>{s.end or 'streaming…'}</td></tr>"
        )
    style = "font-size: 11px; white-space: nowrap; border-collapse: collapse"
    return f'<table style="{style}"><tr>{head}</tr>{"".join(body)}</table>'


class _View:
    """The widget of one `Inspector.widget()` call."""

    def __init__(self) -> None:
        import ipywidgets as widgets  # imported only when a widget is first built

        from kit.notebook.widget import labelled_box

        self.table = widgets.HTML()
        self.timeline = widgets.HTML()
        children = [widgets.HTML("<b>Stream inspector</b>"), self.table, self.timeline]
        self.box = labelled_box(children, "StreamInspector()", "column", flex="1 1 50%")

    def update(self, streams: list[StreamRecord]) -> None:
        if not streams:
            self.table.value = "<i>No stream yet: send a message.</i>"
            self.timeline.value = ""
            return
        self.table.value = stats_table(streams)
        self.timeline.value = f"<div>Latest stream's timeline</div>{timeline_svg(streams[-1])}"
