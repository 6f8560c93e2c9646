"""The servers the benchmarks measure: the kit with and without coalescing, and the naive baseline.

All are mounted in one WSGI app under path prefixes, so one server process serves every variant and
the variants are measured in the same run, on the same machine state.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

from flask import Flask, Response
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from kit import CancelToken, create_app

STAMP = "<{:.6f}>"  # a piece that carries the perf_counter() at which the source yielded it


def burst_text(chars: int) -> str:
    """The `chars`-long text every burst variant sends."""
    return ("streaming " * (chars // 10 + 1))[:chars]


def burst_source(chars: int) -> object:
    """A scripted source that yields `chars` one-character pieces as fast as it can."""
    text = burst_text(chars)

    def source(messages: list[dict[str, str]]) -> Iterator[str]:
        return iter(text)

    return source


def stamped_source(rate_hz: float, duration_s: float) -> object:
    """A scripted source pacing time-stamped pieces at `rate_hz` for `duration_s`, on an absolute schedule.

    perf_counter() is CLOCK_MONOTONIC on Linux, shared by all processes, so a client in another
    process can subtract the stamp from its own receive time.
    """
    interval, count = 1.0 / rate_hz, round(rate_hz * duration_s)

    def source(messages: list[dict[str, str]], cancel: CancelToken) -> Iterator[str]:
        start = time.perf_counter()
        for index in range(count):
            delay = start + index * interval - time.perf_counter()
            if delay > 0 and cancel.wait(delay):
                return
            yield STAMP.format(time.perf_counter())

    return source


def idle_source(messages: list[dict[str, str]], cancel: CancelToken) -> Iterator[str]:
    """A scripted source that stays silent (the stream lives on heartbeats) until cancelled or 120 s."""
    cancel.wait(120.0)
    yield "bye"


def idle_app() -> Flask:
    """The idle-stream app alone, for gunicorn (`bench.targets:idle_app()`)."""
    return create_app(idle_source)


def naive_app(chars: int) -> Flask:
    """The upstream Flask example's pattern, made iterative: one SSE event per character, no coalescing,
    no heartbeat, no producer thread. (The original recursed once per chunk and appended a space.)"""
    app = Flask("naive")
    text = burst_text(chars)

    @app.post("/chat-stream")
    def chat_stream() -> Response:
        def events() -> Iterator[str]:
            for char in text:
                yield f"data: {json.dumps({'text': char})}\n\n"

        return Response(events(), mimetype="text/event-stream")

    return app


def all_targets(chars: int, rates: tuple[float, ...], duration_s: float) -> DispatcherMiddleware:
    """Every variant under its own prefix: /kit, /per-piece, /naive, /stamped-<rate>[-off]."""
    mounts: dict[str, Flask] = {
        "/kit": create_app(burst_source(chars)),
        "/per-piece": create_app(burst_source(chars), coalesce_ms=0),
        "/naive": naive_app(chars),
        "/idle": idle_app(),
    }
    for rate in rates:
        mounts[f"/stamped-{rate:g}"] = create_app(stamped_source(rate, duration_s))
        mounts[f"/stamped-{rate:g}-off"] = create_app(stamped_source(rate, duration_s), coalesce_ms=0)
    return DispatcherMiddleware(Flask("root"), mounts)


def main() -> None:
    """Serve every target on a free loopback port; print the port on the first line."""
    import argparse

    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 100.0, 1000.0])
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request would skew the runs
    server = make_server("127.0.0.1", 0, all_targets(args.chars, tuple(args.rates), args.duration), threaded=True)
    server.daemon_threads = True
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
