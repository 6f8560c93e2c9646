"""300 concurrent streaming chats against the production server (`serve --prod`) on loopback.

Each chat streams 200 pieces, one every 50 ms (10 s), from a scripted source that stamps every piece
with the time it was yielded. The client (one asyncio loop, httpx.AsyncClient) checks that every reply
is complete and exact, and reports the latency the kit added (arrival minus stamp, same clock) and the
server's memory per open stream. Figures are printed (`pytest -s`) and recorded in docs/reliability.md;
only correctness and a generous memory bound are asserted, since timings on a shared 2-core machine vary.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import httpx
import pytest

from kit.serving.client import chat_body
from tests.prod_server import ProdServer

STREAMS = 300
PIECES = 200
INTERVAL_MS = 50
_PIECE = re.compile(r"(\d{4}) (\d+\.\d{6})")


@dataclass
class StreamResult:
    status: int = 0
    sequence: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, one per piece
    first_event_s: float = 0.0
    malformed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def one_stream(client: httpx.AsyncClient, url: str, opened: list[int]) -> StreamResult:
    result = StreamResult()
    started = time.time()
    text = []
    async with client.stream("POST", url, json=chat_body("stream for 10 s")) as response:
        result.status = response.status_code
        opened.append(1)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # heartbeats
            now = time.time()
            result.first_event_s = result.first_event_s or now - started
            payload = json.loads(line[5:])
            if "error" in payload:
                result.errors.append(payload["error"])
                continue
            text.append(payload["text"])
            for piece in payload["text"].splitlines():
                match = _PIECE.fullmatch(piece)
                if match is None:
                    result.malformed.append(piece)
                    continue
                result.sequence.append(int(match.group(1)))
                result.latencies.append(now - float(match.group(2)))
    if not "".join(text).endswith("\n"):
        result.malformed.append("the reply does not end with a whole piece")
    return result


async def run_load(url: str, server: ProdServer) -> tuple[list[StreamResult], int, int, float]:
    """Open every stream at once; sample the server's memory while all are open."""
    opened: list[int] = []
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        idle = server.rss_bytes()
        started = time.monotonic()
        tasks = [asyncio.create_task(one_stream(client, url, opened)) for _ in range(STREAMS)]
        peak = idle
        while not all(task.done() for task in tasks):
            await asyncio.sleep(0.25)
            if len(opened) == STREAMS and not any(task.done() for task in tasks):
                peak = max(peak, server.rss_bytes())
        results = [task.result() for task in tasks]
    return results, idle, peak, time.monotonic() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


@pytest.mark.parametrize(
    ("worker_class", "options"),
    [
        ("gevent", ()),
        # Each open stream holds a thread; the kernel does not spread connections evenly over the
        # workers, so each gets enough threads for all of them.
        ("threads", ("--threads", str(STREAMS))),
    ],
)
def test_300_concurrent_streams_all_arrive_complete_and_exact(worker_class: str, options: tuple[str, ...]) -> None:
    app = f"tests.prod_server:paced_app({PIECES}, {INTERVAL_MS})"
    with ProdServer("--app", app, "--worker-class", worker_class, "--workers", "2", *options) as server:
        results, idle, peak, elapsed = asyncio.run(run_load(server.url + "chat-stream", server))
    latencies = [latency for result in results for latency in result.latencies]
    first_events = [result.first_event_s for result in results]
    per_stream = (peak - idle) / STREAMS
    print(
        f"\n{worker_class}: {STREAMS} streams x {PIECES} pieces in {elapsed:.1f} s; added latency "
        f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.0f} ms; first event p99 {percentile(first_events, 0.99) * 1000:.0f} ms; "
        f"server memory {idle / 2**20:.0f} MiB idle, {peak / 2**20:.0f} MiB with all open "
        f"= {per_stream / 1024:.0f} KiB per open stream"
    )
    assert [result.status for result in results] == [200] * STREAMS
    assert [result.errors for result in results if result.errors] == []
    assert [result.malformed for result in results if result.malformed] == []
    expected = list(range(PIECES))
    assert sum(result.sequence == expected for result in results) == STREAMS  # every piece, once, in order
    # Generous: a kit that buffered whole replies per stream, or leaked, would blow through it.
    assert per_stream < 1024 * 1024
