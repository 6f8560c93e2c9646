"""The app the async load test has gunicorn serve (gunicorn imports it by name): an async source that streams
from the Anthropic-shaped peer over its own `httpx.AsyncClient`, and a `/debug/async` route that reports what
the worker holds (tasks on the kit's loop, producer threads, other threads, sockets) and how runs ended.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx_sse
from flask import Flask, jsonify

from kit import create_app
from kit.pipeline.event_loop import owned_loop, pending_tasks
from kit.pipeline.pump import live_producers

_runs = {"started": 0, "cleaned": 0, "cancelled": 0}
_lock = threading.Lock()


def _count(key: str) -> None:
    with _lock:
        _runs[key] += 1


def peer_events(peer_url: str) -> Any:
    """An async generator source: the peer's Anthropic events as dicts, each stream on its own connection."""

    async def source(messages: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        _count("started")
        body = {"model": "peer", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        try:
            async with (
                httpx.AsyncClient(timeout=30) as client,
                httpx_sse.aconnect_sse(client, "POST", peer_url + "/v1/messages", json=body) as events,
            ):
                async for event in events.aiter_sse():
                    yield event.json()
        except asyncio.CancelledError:
            _count("cancelled")
            raise
        finally:
            _count("cleaned")

    return source


def _open_sockets() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:
            continue  # closed while listing
    return count


async def _task_places() -> list[str]:
    """Where each task on the kit's loop waits (the innermost awaited frame): a failed leak check says what hangs."""
    places = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        awaited, where = task.get_coro(), "not started"
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else where
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        places.append(f"{task.get_coro()!r} at {where}")
    return places


def _threads() -> int:
    # gunicorn's gthread pool keeps the threads it grew under load: those are the server's, not the kit's.
    return sum(not thread.name.startswith("ThreadPoolExecutor") for thread in threading.enumerate())


def async_peer_app(peer_url: str) -> Flask:
    """gunicorn factory: `tests.async_app:async_peer_app("http://127.0.0.1:PORT")`."""
    app = create_app(peer_events(peer_url.rstrip("/")), coalesce_ms=0)

    @app.get("/debug/async")
    def debug() -> Any:
        with _lock:
            runs = dict(_runs)
        tasks = pending_tasks()
        waiting = asyncio.run_coroutine_threadsafe(_task_places(), owned_loop()).result(5) if tasks else []
        return jsonify(
            waiting=waiting,
            tasks=tasks,
            producers=live_producers(),
            threads=_threads(),
            sockets=_open_sockets(),
            **runs,
        )

    return app
