"""Streams held against memory: open many idle streams (alive on heartbeats) and read the server's RSS."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.measure import ROOT, ServerProcess
from kit.notebook.child_server import free_port, wait_until_answering
from kit.serving.client import chat_body
from kit.serving.production import gunicorn_command


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (gunicorn's workers), in MB."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total_kb += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        pending.extend(int(child) for child in children)
    return total_kb / 1024


async def _hold(
    client: httpx.AsyncClient, url: str, opened: asyncio.Event, counter: list[int], target: int, release: asyncio.Event
) -> bool:
    """Open one stream and keep it open until released; False if the server refused or dropped it."""
    try:
        async with client.stream("POST", url, json=chat_body("hold")) as response:
            counter[0] += 1
            if counter[0] >= target:
                opened.set()
            await release.wait()
            return response.status_code == 200
    except httpx.HTTPError:
        counter[0] += 1
        if counter[0] >= target:
            opened.set()
        return False


async def _measure(url: str, pid: int, levels: tuple[int, ...]) -> list[dict[str, float]]:
    rows = []
    limits = httpx.Limits(max_connections=max(levels) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for level in levels:
            opened, release, counter = asyncio.Event(), asyncio.Event(), [0]
            tasks = [asyncio.create_task(_hold(client, url, opened, counter, level, release)) for _ in range(level)]
            if level:
                await asyncio.wait_for(opened.wait(), timeout=60)
            await asyncio.sleep(1.0)  # let the server settle: threads started, first heartbeats out
            rss_mb = tree_rss_mb(pid)
            release.set()
            held = await asyncio.gather(*tasks)
            rows.append({"streams": level, "rss_mb": rss_mb, "refused": held.count(False)})
            await asyncio.sleep(1.0)
    return rows


def held_streams_memory(url: str, pid: int, levels: tuple[int, ...] = (0, 50, 100, 200)) -> dict[str, Any]:
    """RSS at each number of open streams, and the marginal MB per stream (least squares slope)."""
    started = time.perf_counter()
    rows = asyncio.run(_measure(url, pid, levels))
    xs, ys = [r["streams"] for r in rows], [r["rss_mb"] for r in rows]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return {"rows": rows, "mb_per_stream": slope, "seconds": time.perf_counter() - started}


@contextmanager
def production_server(worker_class: str, workers: int = 2, threads: int = 128) -> Iterator[ServerProcess]:
    """The idle-stream app under gunicorn (the kit's --prod command line), until the block ends."""
    port = free_port()
    command = gunicorn_command(
        "bench.targets:idle_app()", port=port, workers=workers, worker_class=worker_class, threads=threads
    )
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/healthz", 30, ok_only=True)
        time.sleep(1.0)  # every worker booted, not just the first
        yield ServerProcess(url, process.pid)
    finally:
        process.terminate()
        process.wait(30)
