"""Replies that survive the network: what the run's event log costs, and how fast a reloaded page rejoins.

- Per-token overhead of the event log: many concurrent streams of a fast source, one event per token
  (`coalesce_ms=0`), on a thread (a run with its claim and log in SQLite) against the same streams without a
  thread (no run, no log), in the same run: server-side microseconds per token, and the ratio (the limit is 1.0,
  no log at all).
- New conversations at once on one SQLite file (each a new thread: a claim, a run, a transcript): wall time for
  all of them, store warnings (a "database is locked" would be one), writes and commits per run.
- The log's size per 1,000 tokens (the rows' bytes as stored), one event per token and as coalesced by default.
- Reload mid-reply to the first rejoined text in chromium (kit's page, the real bundle): p50 and max, on one
  worker against the same page's first text of a fresh send (the limit: a page that had nothing to rejoin); and
  with `--postgres`, across two gunicorn workers on PostgreSQL behind nginx (the reload on the worker that does
  not run the reply, which streams it from the log), against a reload on the worker that runs it.

    python -m bench.bench_rejoin [--streams 1000] [--tokens 100] [--reloads 5] [--postgres auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.measure import report
from kit import create_app
from kit.serving.client import chat_body
from kit.serving.server import BackgroundServer
from kit.testing.fakes import ScriptedSource
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import SqliteThreadStore


def fast_source(tokens: int) -> Any:
    def source(messages: list[dict[str, str]]) -> Iterator[str]:
        yield from (f"t{index} " for index in range(tokens))

    return source


async def _one(client: httpx.AsyncClient, url: str, threaded: bool) -> int:
    headers = {"Accept": "text/event-stream", **({THREAD_ID_HEADER: new_thread_id()} if threaded else {})}
    events = 0
    async with client.stream("POST", url, json=chat_body("go"), headers=headers) as response:
        async for line in response.aiter_lines():
            events += line.startswith("data:")
    return events


async def _wave(url: str, streams: int, threaded: bool) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(_one(client, url, threaded) for _ in range(streams)))
        return time.perf_counter() - started, sum(counts)


def log_overhead(streams: int, tokens: int, rounds: int = 3) -> dict[str, Any]:
    """Wall time per token of `streams` concurrent streams with the log on (threads) and off, alternated."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(fast_source(tokens), coalesce_ms=0, thread_store=Path(folder) / "t.sqlite")
        with BackgroundServer(app) as server:
            url = server.url + "chat-stream"
            asyncio.run(_wave(url, min(streams, 50), True))  # warm: schema, imports
            on, off = [], []
            for _ in range(rounds):
                for threaded, samples in ((False, off), (True, on)):
                    seconds, events = asyncio.run(_wave(url, streams, threaded))
                    samples.append(seconds / max(events, 1) * 1e6)
    return {
        "streams": streams,
        "tokens": tokens,
        "off_us_per_token": statistics.median(off),
        "on_us_per_token": statistics.median(on),
        "off_spread": [min(off), max(off)],
        "on_spread": [min(on), max(on)],
        "ratio": statistics.median(on) / statistics.median(off),
    }


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def new_conversations(streams: int, tokens: int = 20) -> dict[str, Any]:
    """`streams` new threads at once on one SQLite file: seconds for all, warnings, writes and commits a run."""
    warnings = _Warnings()
    logging.getLogger("kit").addHandler(warnings)
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteThreadStore(Path(folder) / "t.sqlite")
            with BackgroundServer(create_app(fast_source(tokens), coalesce_ms=0, thread_store=store)) as server:
                url = server.url + "chat-stream"
                asyncio.run(_wave(url, 5, True))  # warm: schema, imports
                writes, commits, warned = store.writer.writes, store.writer.commits, warnings.count
                seconds, events = asyncio.run(_wave(url, streams, True))
    finally:
        logging.getLogger("kit").removeHandler(warnings)
    return {
        "streams": streams,
        "seconds": seconds,
        "whole": events == streams * tokens,
        "warnings": warnings.count - warned,
        "writes_per_run": (store.writer.writes - writes) / streams,
        "commits_per_run": (store.writer.commits - commits) / streams,
    }


def log_size(tokens: int = 1000) -> dict[str, float]:
    """Bytes the log keeps for a reply of `tokens` tokens: one event per token, and coalesced by default."""
    sizes = {}
    for name, coalesce_ms in (("per_token", 0.0), ("coalesced", 16.0)):
        with tempfile.TemporaryDirectory() as folder:
            store = Path(folder) / "t.sqlite"
            source = ScriptedSource([f"t{index} " for index in range(tokens)], delay_s=0.001)
            with BackgroundServer(create_app(source, coalesce_ms=coalesce_ms, thread_store=store)) as server:
                body = chat_body("go")
                httpx.post(server.url + "chat-stream", json=body, headers={THREAD_ID_HEADER: new_thread_id()}).read()
            with sqlite3.connect(store) as connection:
                row = connection.execute("SELECT COUNT(*), SUM(LENGTH(body) + 8 + LENGTH(run_id)) FROM kit_run_events")
                events, stored = row.fetchone()
            sizes[f"{name}_events"] = events
            sizes[f"{name}_bytes_per_1000_tokens"] = stored * 1000 / tokens
    return sizes


def _wait(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    # The page's CSP forbids eval, which Playwright's wait_for_function needs: poll with evaluate instead.
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page never showed {expression!r}")
        time.sleep(0.005)


# The last bubble (the intro left out) is an answer with text in it.
_FIRST_TEXT = (
    "(() => { const root = document.querySelector('#chat').shadowRoot; if (!root) return false;"
    " const all = [...root.querySelectorAll(\"[class*='deep-chat-outer-container-role-']\")]"
    ".filter((e) => !e.classList.contains('deep-chat-intro')); const last = all[all.length - 1];"
    " return !!last && last.className.includes('role-ai') && last.innerText.trim().length > 0; })()"
)
_WHOLE_TEXT = _FIRST_TEXT.replace("innerText.trim().length > 0", "innerText.includes('w999')")
RELOAD_TOKENS, RELOAD_DELAY_S = 1000, 0.005  # about 5 s: a reload lands mid-reply after a slow nginx switch too


def _reload_rounds(
    page: Any, url: str, reloads: int, before_reload: Callable[[], object] = lambda: None
) -> tuple[list[float], list[float]]:
    """`reloads` rounds of a fresh send (ms to its first text) then a reload mid-reply (ms to the first rejoined
    text); `before_reload` runs between the two (it may send the reload to another worker)."""
    page.goto(url)
    _wait(page, "window.kitThread && window.kitThread.restored >= 0")  # a thread of earlier rounds, or none
    rejoin_ms, fresh_ms = [], []
    for _ in range(reloads):
        page.locator("#kit-new-chat").click()
        started = time.perf_counter()
        page.locator("#text-input").click()
        page.keyboard.type("go")
        page.keyboard.press("Enter")
        _wait(page, _FIRST_TEXT)
        fresh_ms.append((time.perf_counter() - started) * 1000)
        before_reload()
        started = time.perf_counter()
        page.reload()
        _wait(page, _FIRST_TEXT)
        rejoin_ms.append((time.perf_counter() - started) * 1000)
        _wait(page, "window.kitThread && !!window.kitThread.rejoined")  # a rejoin, not a reply already over
        # The rejoined reply read to its end before the next round (Deep Chat sends nothing meanwhile).
        _wait(page, _WHOLE_TEXT)
    return rejoin_ms, fresh_ms


def _figures(rejoin_ms: list[float], limit_ms: list[float]) -> dict[str, float]:
    return {
        "rejoin_p50_ms": statistics.median(rejoin_ms),
        "rejoin_max_ms": max(rejoin_ms),
        "limit_p50_ms": statistics.median(limit_ms),
        "ratio": statistics.median(rejoin_ms) / statistics.median(limit_ms),
    }


def reload_rejoin(reloads: int) -> dict[str, Any]:
    """Chromium, one worker (werkzeug, SQLite): reload mid-reply, time to the first rejoined text in the answer
    bubble; the limit is a fresh send's first text on the same page."""
    from kit.testing.browser import chromium_page
    from tests.rejoin_prod import long_reply

    with tempfile.TemporaryDirectory() as folder:
        source = ScriptedSource(long_reply(RELOAD_TOKENS), delay_s=RELOAD_DELAY_S)
        app = create_app(source, thread_store=Path(folder) / "t.sqlite")
        with BackgroundServer(app) as server, chromium_page() as page:
            rejoin_ms, fresh_ms = _reload_rounds(page, server.url, reloads)
    return {"reloads": reloads, **_figures(rejoin_ms, fresh_ms), "rejoin_ms": rejoin_ms}


def reload_rejoin_across(reloads: int, postgres_url: str) -> dict[str, Any]:
    """Chromium, two gunicorn workers on PostgreSQL behind nginx: a reload that lands on the worker running the
    reply, and one that lands on the other (nginx switched mid-reply, the rejoin read from the log); the limit
    of the second is the first, on the same stack."""
    from kit.testing.browser import chromium_page
    from tests.rejoin_prod import TwoWorkers

    with TwoWorkers(postgres_url, RELOAD_TOKENS, RELOAD_DELAY_S) as two, chromium_page() as page:
        for _worker in range(2):  # each worker's store pool open (it opens on first use), as on a server in service
            httpx.get(f"{two.url}threads/{new_thread_id()}/run", timeout=30).raise_for_status()
            two.switch()
        same_ms, _ = _reload_rounds(page, two.url, reloads)
        other_ms, _ = _reload_rounds(page, two.url, reloads, before_reload=two.switch)
    return {
        "reloads": reloads,
        "same_worker_p50_ms": statistics.median(same_ms),
        "same_worker_max_ms": max(same_ms),
        **_figures(other_ms, same_ms),
        "same_worker_ms": same_ms,
        "other_worker_ms": other_ms,
    }


def describe(results: dict[str, Any]) -> str:
    over, size, reload, new = results["overhead"], results["size"], results["reload"], results["new"]
    return "\n".join(
        [
            "| figure | value | limit, same run | ratio |",
            "| --- | --- | --- | --- |",
            f"| event log, per token, {over['streams']:,} concurrent streams x {over['tokens']} tokens | "
            f"{over['on_us_per_token']:.1f} us ({over['on_spread'][0]:.1f}-{over['on_spread'][1]:.1f}) | "
            f"{over['off_us_per_token']:.1f} us without a run | {over['ratio']:.2f} |",
            f"| {new['streams']:,} new conversations at once on SQLite | {new['seconds']:.1f} s, {new['warnings']} "
            f"store warnings | {new['writes_per_run']:.0f} writes a run in {new['commits_per_run']:.2f} commits | |",
            f"| log size per 1,000 tokens, one event a token | {size['per_token_bytes_per_1000_tokens']:,.0f} B | | |",
            f"| log size per 1,000 tokens, coalesced (default) | {size['coalesced_bytes_per_1000_tokens']:,.0f} B "
            f"({size['coalesced_events']} events) | | |",
            f"| reload mid-reply to first rejoined text (chromium), one worker (werkzeug, SQLite), p50 / max | "
            f"{reload['rejoin_p50_ms']:.0f} / {reload['rejoin_max_ms']:.0f} ms | "
            f"{reload['limit_p50_ms']:.0f} ms, a fresh send's first text | {reload['ratio']:.2f} |",
            *_across_row(results.get("across")),
        ]
    )


def _across_row(across: dict[str, Any] | None) -> list[str]:
    if across is None:
        return []
    return [
        "| reload mid-reply to first rejoined text (chromium), on the other of two gunicorn workers (PostgreSQL, "
        f"nginx), p50 / max | {across['rejoin_p50_ms']:.0f} / {across['rejoin_max_ms']:.0f} ms | "
        f"{across['same_worker_p50_ms']:.0f} / {across['same_worker_max_ms']:.0f} ms, the reload on the worker "
        f"running the reply | {across['ratio']:.2f} |"
    ]


def run(streams: int, tokens: int, reloads: int, postgres_url: str | None = None) -> dict[str, Any]:
    figures = {
        "overhead": log_overhead(streams, tokens),
        "new": new_conversations(streams),
        "size": log_size(),
        "reload": reload_rejoin(reloads),
    }
    if postgres_url is not None:
        figures["across"] = reload_rejoin_across(reloads, postgres_url)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument(
        "--postgres", help="a postgresql:// URL for the two-worker figure, or `auto` for a throwaway local cluster"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    from tests.postgres import postgres_url  # Debian's postgresql, as the tests start it

    with postgres_url(args.postgres) as url:
        figures = run(args.streams, args.tokens, args.reloads, url)
    report(figures, describe, args.json)


if __name__ == "__main__":
    main()
