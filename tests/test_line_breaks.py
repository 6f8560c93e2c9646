"""Text with every character that ends a line somewhere (str.splitlines, httpx's iter_lines, Unicode) goes through
exactly: SSE lines end only at CR, LF or CRLF, so U+2028, U+2029 and U+0085 are text. Streamed in every
granularity through the kit's client, read by the doctor's reader, and kept in a thread's transcript."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask, Response

from kit import create_app
from kit.pipeline.events import EndEvent, ErrorEvent, HeartbeatEvent, TextEvent
from kit.pipeline.sse import LineDecoder, frame, parse_line, sse_lines
from kit.serving.client import Received, Reply, chat_body, iter_stream
from kit.serving.doctor import _receive
from kit.testing.fakes import ScriptedSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from tests.helpers import bubbles

# Everything str.splitlines() splits at, plus CRLF: the JSON encoder escapes CR and LF, not the others.
BREAKERS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
assert all(len(f"a{breaker}b".splitlines()) == 2 for breaker in BREAKERS)
TEXT = "".join(f"line {index}{breaker}" for index, breaker in enumerate(BREAKERS)) + "the end " + "".join(BREAKERS)


def pieces(text: str = TEXT) -> list[str]:
    """The text cut so that a breaker starts, ends or is alone in a piece, and CRLF is split in two."""
    out, rest = [], text
    for size in itertools.cycle([1, 2, 3, 5, 8]):
        if not rest:
            return out
        out.append(rest[:size])
        rest = rest[size:]
    return out


def test_the_decoder_ends_lines_only_at_cr_lf_and_crlf_wherever_the_chunks_are_cut() -> None:
    events = [TextEvent(1, TEXT, "ai"), HeartbeatEvent(1), TextEvent(2, "\u2028"), ErrorEvent(3, "x\u0085y")]
    wire = "".join(frame(event) for event in events) + "data: last\r\n\r\n"
    expected = list(sse_lines([wire]))
    assert [parse_line(line) for line in expected if line.startswith("data")][-1] == ("data", "last")
    for cut in range(len(wire) + 1):  # every place a network chunk could end, the CR of a CRLF included
        assert list(sse_lines([wire[:cut], wire[cut:]])) == expected, cut
    decoder = LineDecoder()
    assert [line for char in wire for line in decoder.feed(char)] == expected
    assert decoder.close() == []
    assert frame(EndEvent(4, "finished")) == ": end\n"  # a lone comment: Deep Chat dispatches nothing


def turn(url: str, thread_id: str) -> Reply:
    items = iter_stream(url + "chat-stream", chat_body("write it"), headers={THREAD_ID_HEADER: thread_id})
    reply = next(items)
    assert isinstance(reply, Reply)
    reply.items.extend(item for item in items if isinstance(item, Received))
    return reply


@pytest.mark.parametrize("granularity", ["chunk", "word", "char"])
@pytest.mark.parametrize("lead", ["", "\u2028"])  # a breaker in the first event (an HTTP 500 before) or later only
def test_every_line_breaking_character_streams_and_reloads_exactly(
    serve,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    granularity: str,
    lead: str,
) -> None:
    text = lead + TEXT
    app = create_app(ScriptedSource(pieces(text)), granularity=granularity, thread_store=tmp_path / "t.sqlite")
    server = serve(app)
    thread_id = new_thread_id()
    reply = turn(server.url, thread_id)
    assert reply.status == 200 and reply.errors == []
    assert reply.text == text
    ids = [item.id for item in reply.items if item.payload is not None]
    assert ids == [str(number) for number in range(1, len(ids) + 1)]  # every event numbered, in order
    reloaded = bubbles(httpx.get(f"{server.url}threads/{thread_id}/messages").json())
    assert reloaded == [{"role": "user", "text": "write it"}, {"role": "ai", "text": text}]


def _raw_stream(chunks: list[str]) -> Flask:
    """An SSE route that writes exactly these chunks (the doctor's reader against any cut of the bytes)."""
    app = Flask(__name__)

    @app.post("/chat-stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:
            yield from (chunk.encode() for chunk in chunks)

        return Response(body(), mimetype="text/event-stream")

    return app


def test_the_doctors_reader_keeps_every_line_breaking_character(serve) -> None:  # type: ignore[no-untyped-def]
    head = "kit-probe heartbeat_s=2\n"  # the doctor reads on only while the stream is its probe
    wire = "".join(frame(TextEvent(index + 1, piece)) for index, piece in enumerate([head, *pieces()]))
    wire += ": ping\n" + frame(ErrorEvent(999, "bad\u2028news"))
    for size in (1, 7, len(wire)):
        server = serve(_raw_stream([wire[start : start + size] for start in range(0, len(wire), size)]))
        got = _receive(server.url + "chat-stream", 0.0, 10.0, {})
        assert "".join(text for _, text in got.texts) == head + TEXT, size
        assert got.errors == ["bad\u2028news"] and len(got.beats) == 1
