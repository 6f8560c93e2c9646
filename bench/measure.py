"""Shared measuring tools for the benchmarks: a target server process, raw stream reads, statistics."""

from __future__ import annotations

import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kit.serving.client import chat_body

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def shared_client() -> httpx.Client:
    """One HTTP client for every request a benchmark times (httpx's clients are thread-safe). Building one costs
    23 ms here (its TLS context, unused on loopback HTTP): a client per reply counted that against the server, in
    its time to first text and its tokens/s. No connection is kept alive: the servers a benchmark starts and stops
    reuse ports, and a pooled connection to a stopped one fails the next request (a new one takes 0.1 ms here)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    return httpx.Client(timeout=httpx.Timeout(300.0), limits=limits)


@dataclass(frozen=True)
class ServerProcess:
    url: str  # base URL, no trailing slash
    pid: int


@contextmanager
def server_process(module: str, *args: str) -> Iterator[ServerProcess]:
    """Run `python -m module args` (which prints its port first) and yield its URL and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield ServerProcess(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True)
class RawRead:
    """A whole stream read as bytes, with the arrival time of every chunk (perf_counter)."""

    started: float
    chunks: list[tuple[float, bytes]]

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    def events(self) -> list[dict[str, object]]:
        lines = self.body.decode().split("\n")
        return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]

    def timed_texts(self) -> list[tuple[float, str]]:
        """(arrival time, text) for each event, parsed after the clock stopped."""
        out, buffer = [], b""
        for at, chunk in self.chunks:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n\n")
            for block in complete:
                for line in block.decode().split("\n"):
                    if line.startswith("data: "):
                        out.append((at, str(json.loads(line[6:]).get("text", ""))))
        return out


def read_raw(url: str, client: httpx.Client, text: str = "go") -> RawRead:
    """POST a chat and read the response as fast as possible, without parsing while the clock runs."""
    started = time.perf_counter()
    chunks: list[tuple[float, bytes]] = []
    with client.stream("POST", url, json=chat_body(text)) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            chunks.append((time.perf_counter(), chunk))
    return RawRead(started, chunks)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median with its spread: min, max and, for larger samples, p99."""
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "n": len(ordered),
    }


def report(
    figures: dict[str, Any],
    describe: Callable[[dict[str, Any]], str],
    json_path: str | None,
    plot: Callable[[dict[str, Any], Path], None] | None = None,
    plot_path: str | None = None,
) -> None:
    """A benchmark's end: its table printed, its figures written as JSON and its plot drawn where asked."""
    print(describe(figures))
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=1))
    if plot is not None and plot_path:
        plot(figures, Path(plot_path))


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """A server the benchmark started: SIGTERM, then SIGKILL if it has not exited within 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


Figures = dict[str, float]


def alternating_rounds(
    measures: dict[str, Callable[[int], Figures]], users: Sequence[int], rounds: int
) -> dict[str, list[dict[str, Figures]]]:
    """Every set-up measured with each number of users, `rounds` times over, the set-ups taking turns within a
    round (who goes first rotating): each one's figures come from the same minutes of a shared machine, whose speed
    drifts by 20% from one minute to the next here. A number of users that `users` names more than once is
    measured that many times, in turns, and the round keeps each figure's median. Per set-up: a list of rounds,
    each {"1": figures, ...}.

    >>> calls = iter(range(100))
    >>> measures = {"a": lambda users: {"x": next(calls)}, "b": lambda users: {"x": next(calls)}}
    >>> alternating_rounds(measures, (1, 1, 1, 8), 1)["a"]
    [{'1': {'x': 2}, '8': {'x': 6}}]
    """
    names = list(measures)
    results: dict[str, list[dict[str, Figures]]] = {name: [] for name in names}
    for index in range(rounds):
        first = index % len(names)
        order = names[first:] + names[:first]
        taken: dict[str, dict[str, list[Figures]]] = {name: {} for name in names}
        for count in users:
            for name in order:
                taken[name].setdefault(str(count), []).append(measures[name](count))
        for name in names:
            results[name].append({count: _medians(repeats) for count, repeats in taken[name].items()})
    return results


def _medians(repeats: list[Figures]) -> Figures:
    return {key: statistics.median(figures[key] for figures in repeats) for key in repeats[0]}
