"""The lightest client a benchmark can be: a streamed HTTP response read straight off its socket, every block with
its arrival time, and nothing parsed until the response has ended.

On a 2-core machine the client shares the cores with the server it measures: httpx and an SSE parser took 0.2 ms
of CPU a token here (2-3% of a decode step, taken from llama.cpp's threads, and more for a server that sends an
event a token), a cost that a user's browser, on a machine of its own, does not put on the server.
"""

from __future__ import annotations

import bisect
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SocketRead:
    """One response as it came: when it was asked for, when its connection closed, and the blocks read."""

    asked: float
    ended: float
    blocks: list[tuple[float, bytes]]

    @property
    def _raw(self) -> bytes:
        return b"".join(block for _, block in self.blocks)

    def status(self) -> int:
        return int(self._raw.split(b" ", 2)[1])

    def data(self) -> list[tuple[float, str]]:
        """(arrival time, value) of every SSE `data:` line of the body, in order: a line's time is when its end
        arrived.

        >>> body = b"data: a\\n\\nda"
        >>> head = b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        >>> chunked = head + b"%x\\r\\n" % len(body) + body + b"\\r\\n"
        >>> read = SocketRead(0.0, 3.0, [(1.0, chunked), (2.0, b"7\\r\\nta: b\\n\\n\\r\\n0\\r\\n\\r\\n")])
        >>> read.data()
        [(1.0, 'a'), (2.0, 'b')]
        """
        found, line = [], b""
        for at, piece in self._body_pieces():
            line += piece
            *complete, line = line.split(b"\n")
            found += [(at, text[6:].decode()) for text in complete if text.startswith(b"data: ")]
        return found

    def _body_pieces(self) -> Iterator[tuple[float, bytes]]:
        """The body's bytes (dechunked when the response is chunked), each piece with its block's arrival time."""
        raw = self._raw
        ends = list(_cumulative(len(block) for _, block in self.blocks))
        start = raw.index(b"\r\n\r\n") + 4
        chunked = b"transfer-encoding: chunked" in raw[:start].lower()
        spans = list(_chunk_spans(raw, start)) if chunked else [(start, len(raw))]
        for begin, end in spans:  # split each span where one block ends and the next begins
            while begin < end:
                block = bisect.bisect_right(ends, begin)
                stop = min(end, ends[block])
                yield self.blocks[block][0], raw[begin:stop]
                begin = stop


def _cumulative(lengths: Iterator[int]) -> Iterator[int]:
    total = 0
    for length in lengths:
        total += length
        yield total


def _chunk_spans(raw: bytes, at: int) -> Iterator[tuple[int, int]]:
    """(start, end) offsets in `raw` of each chunk's data, from `at` to the last (empty) chunk."""
    while True:
        line_end = raw.index(b"\r\n", at)
        size = int(raw[at:line_end].split(b";")[0], 16)
        if size == 0:
            return
        yield line_end + 2, line_end + 2 + size
        at = line_end + 2 + size + 2


def post_streaming(url: str, body: dict[str, Any], timeout_s: float = 300.0) -> SocketRead:
    """POST `body` as JSON to `url` (http, loopback) and read the whole streamed response until the server closes
    the connection (the request says `Connection: close`)."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    blocks: list[tuple[float, bytes]] = []
    asked = time.perf_counter()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s) as sock:
        sock.sendall(head + payload)
        while block := sock.recv(65536):
            blocks.append((time.perf_counter(), block))
    return SocketRead(asked, time.perf_counter(), blocks)
