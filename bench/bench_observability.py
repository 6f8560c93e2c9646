"""The cost of metrics and traces: the server's CPU time per token on 1,000 concurrent streams, the same chat
with metrics off, with `metrics=True`, and with spans exported to an in-process (in-memory) exporter.

One server process serves the three variants under path prefixes. Two measures, in the same run:
- turns: 1,000 streams of one variant at a time, the server process's CPU (user + system) per token, against
  "off" (the limit: the kit without any observability) from the same round. This is the whole cost, the
  contention of 1,000 threads included, and it drifts with whatever else the shared machine runs.
- mixed: 1,000 streams at once, a third of each variant interleaved, each stream's cost read on the CPU clock
  of the thread that serves it (where the observers run: `time.thread_time`, which neither a waiting thread
  nor another process moves). The three variants meet the same load at the same moment, so the difference
  per token is the observers' own cost. The pump's producer threads (the source, the same for every variant)
  are outside this clock.
CPU time rather than wall time: a stream's cost is what it takes from the cores.
`python -m bench.bench_observability --quick` tries it out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.measure import report, server_process, summary
from kit.serving.client import ACCEPT_HEADERS, chat_body

VARIANTS = ("off", "metrics", "traced")
TOKENS = 20  # per stream: one event each (coalescing off), so every token pays the whole per-event path


def token_source(tokens: int) -> Any:
    """A source of `tokens` one-token pieces at once: the web tier's work alone, no model."""

    def source(messages: list[dict[str, str]]) -> Iterator[str]:
        return iter([f" t{index}" for index in range(tokens)])

    return source


class ThreadClock:
    """WSGI middleware: the CPU time of the threads serving its app's requests, summed (each request is read on
    its own thread's clock, from the call to the body's close: waits and other threads do not count)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.seconds = 0.0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        started = time.thread_time()
        body = self.app(environ, start_response)

        def timed() -> Iterator[bytes]:
            try:
                yield from body
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                spent = time.thread_time() - started
                with self._lock:
                    self.seconds += spent

        return timed()


def targets(tokens: int) -> Any:
    """The three variants under /off, /metrics and /traced, one WSGI app, each on a thread clock."""
    from flask import Flask
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from kit import create_app

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    common = {"coalesce_ms": 0, "thread_store": False, "tracing": False}
    clocks = {
        "off": ThreadClock(create_app(token_source(tokens), **common)),
        "metrics": ThreadClock(create_app(token_source(tokens), **{**common, "metrics": True})),
        "traced": ThreadClock(create_app(token_source(tokens), **{**common, "tracing": provider})),
    }
    root = Flask("root")

    def cpu() -> str:
        # The server's own CPU clock (every thread's, to the nanosecond: /proc's is in 10 ms ticks), and each
        # variant's serving threads' clocks.
        return json.dumps({"process": time.process_time(), **{v: clock.seconds for v, clock in clocks.items()}})

    root.add_url_rule("/cpu", "cpu", cpu, methods=["GET"])
    return DispatcherMiddleware(root, {f"/{variant}": clock for variant, clock in clocks.items()})


def cpu_seconds(base: str) -> dict[str, float]:
    """CPU time used so far: the server process's (`process`, all its threads), and each variant's serving
    threads'."""
    return dict(httpx.get(f"{base}/cpu", timeout=30).json())


async def _stream(client: httpx.AsyncClient, url: str, gate: asyncio.Semaphore) -> int:
    async with gate, client.stream("POST", url, json=chat_body("go"), headers=ACCEPT_HEADERS) as response:
        events = 0
        async for line in response.aiter_lines():
            events += line.startswith('data: {"text"')
        return events


async def _round(urls: list[str]) -> list[int]:
    """Every url streamed at once; the text events each stream received."""
    limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=0)
    gate = asyncio.Semaphore(len(urls))
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        return list(await asyncio.gather(*(_stream(client, url, gate) for url in urls)))


def measure(base: str, variant: str, streams: int, tokens: int) -> float:
    """Microseconds of server CPU per token for `streams` concurrent streams of one variant."""
    before = cpu_seconds(base)["process"]
    received = sum(asyncio.run(_round([f"{base}/{variant}/chat-stream"] * streams)))
    if received != streams * tokens:
        raise AssertionError(f"{variant}: received {received} tokens, expected {streams * tokens}")
    time.sleep(0.2)  # threads finishing their streams' last bookkeeping
    return (cpu_seconds(base)["process"] - before) / received * 1e6


def measure_mixed(base: str, streams: int, tokens: int) -> dict[str, float]:
    """Microseconds of serving-thread CPU per token of each variant, `streams` concurrent streams in all, the
    variants interleaved (stream i is variant i mod 3)."""
    variants = [VARIANTS[index % len(VARIANTS)] for index in range(streams)]
    before = cpu_seconds(base)
    counts = asyncio.run(_round([f"{base}/{variant}/chat-stream" for variant in variants]))
    time.sleep(0.2)
    after = cpu_seconds(base)
    figures = {}
    for variant in VARIANTS:
        received = sum(count for count, v in zip(counts, variants, strict=True) if v == variant)
        if received != variants.count(variant) * tokens:
            raise AssertionError(f"{variant}: received {received} tokens, expected {variants.count(variant) * tokens}")
        figures[variant] = (after[variant] - before[variant]) / received * 1e6
    return figures


def sequential_us_per_token(replies: int, tokens: int) -> dict[str, float]:
    """The same three variants in this process, one reply after another (no thread contention to blur them):
    microseconds of CPU per token, median of 3."""
    from flask import Flask

    app = targets(tokens)
    clients = {variant: Flask.test_client(app.mounts[f"/{variant}"].app) for variant in VARIANTS}
    body = chat_body("go")
    figures: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(3):
        for variant, client in clients.items():
            started = time.process_time()
            for _ in range(replies):
                client.post("/chat-stream", json=body).get_data()
            figures[variant].append((time.process_time() - started) / (replies * tokens) * 1e6)
    return {variant: sorted(values)[1] for variant, values in figures.items()}


def run(runs: int = 5, streams: int = 1000, tokens: int = TOKENS) -> dict[str, Any]:
    """Per-token CPU of each variant, and its ratio to "off" within each round (medians over `runs`; the order
    of the variants turns each round, so none always runs on a warmer or busier machine)."""
    per_token: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    ratios: dict[str, list[float]] = {variant: [] for variant in VARIANTS[1:]}
    mixed: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    overheads: dict[str, list[float]] = {variant: [] for variant in VARIANTS[1:]}  # µs per token over "off"
    with server_process("bench.bench_observability", "--serve", "--tokens", str(tokens)) as server:
        for variant in VARIANTS:  # warm-up: imports, the first metrics and spans
            measure(server.url, variant, min(streams, 50), tokens)
        for round_ in range(runs):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            figures = {variant: measure(server.url, variant, streams, tokens) for variant in order}
            for variant, value in figures.items():
                per_token[variant].append(value)
            for variant in ratios:
                ratios[variant].append(figures[variant] / figures["off"])
            threads = measure_mixed(server.url, streams, tokens)
            for variant, value in threads.items():
                mixed[variant].append(value)
            for variant in overheads:
                overheads[variant].append(threads[variant] - threads["off"])
        scraped = scrape_histograms(f"{server.url}/metrics/metrics")
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "cpu_us_per_token": {variant: summary(values) for variant, values in per_token.items()},
        "ratio_to_off": {variant: summary(values) for variant, values in ratios.items()},
        "mixed_thread_us_per_token": {variant: summary(values) for variant, values in mixed.items()},
        "overhead_us_per_token": {variant: summary(values) for variant, values in overheads.items()},
        "sequential_us_per_token": sequential_us_per_token(200, tokens),
        "scraped": scraped,
    }


def scrape_histograms(url: str) -> dict[str, Any]:
    """What `GET /metrics` of the metrics variant says after the runs: its histograms' cumulative buckets and
    replies by outcome (the picture in docs/production.md)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("gen_ai_server_time_to_first_token_seconds", "gen_ai_server_request_duration_seconds")
    found: dict[str, Any] = {name: {} for name in wanted}
    found["replies"] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and family.name in wanted:
                bound = sample.labels["le"]
                found[family.name][bound] = found[family.name].get(bound, 0.0) + sample.value
            elif sample.name == "kit_replies_total":
                found["replies"][sample.labels["outcome"]] = sample.value
    return found


def plot(figures: dict[str, Any], path: Path) -> None:
    """Two panels: the time-to-first-token histogram a scrape showed, and the serving threads' CPU per token of
    the three variants in the mixed rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    buckets = figures["scraped"]["gen_ai_server_time_to_first_token_seconds"]
    bounds = [bound for bound in buckets if bound != "+Inf"]
    cumulative = [buckets[bound] for bound in bounds]
    counts = [count - previous for count, previous in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
    left.bar(range(len(bounds)), counts, color="C0")
    left.set_xticks(range(len(bounds)), [f"≤{float(b):g}" for b in bounds], rotation=60, fontsize=7)
    left.set_title(f"gen_ai_server_time_to_first_token_seconds\n{figures['streams']:,} concurrent streams, per bucket")
    cpu = figures["mixed_thread_us_per_token"]  # the three variants under the same load at the same moment
    medians = [cpu[v]["median"] for v in VARIANTS]
    errors = [
        [m - cpu[v]["min"] for v, m in zip(VARIANTS, medians, strict=True)],
        [cpu[v]["max"] - m for v, m in zip(VARIANTS, medians, strict=True)],
    ]
    bars = right.bar(["off", "metrics=True", "traces"], medians, yerr=errors, color=["C7", "C0", "C2"], capsize=4)
    right.bar_label(bars, fmt="{:.1f}")
    right.set_title("serving-thread CPU µs per token, variants mixed\n(median, min-max over rounds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe(figures: dict[str, Any]) -> str:
    """The section's table: each variant's CPU per token, in turns (the process's clock) and mixed (the serving
    threads' clocks), and the mixed rounds' overhead per token against the kit without observability."""

    def spread(figure: dict[str, float], digits: int = 0, sign: str = "") -> str:
        median, low, high = (f"{figure[key]:{sign}.{digits}f}" for key in ("median", "min", "max"))
        return f"{median} ({low} to {high})"

    cpu, ratio = figures["cpu_us_per_token"], figures["ratio_to_off"]
    threads, overhead = figures["mixed_thread_us_per_token"], figures["overhead_us_per_token"]
    lines = [
        f"| {figures['streams']:,} concurrent streams, {figures['tokens_per_stream']} tokens each "
        "| turns: process CPU µs per token | turns: against off | mixed: serving-thread CPU µs per token "
        "| mixed: overhead µs per token |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"off": "off (the limit)", "metrics": "metrics=True", "traced": "traces, in-memory exporter"}
    for variant in VARIANTS:
        against = "1" if variant == "off" else spread(ratio[variant], 2)
        extra = "0" if variant == "off" else spread(overhead[variant], 1, "+")
        lines.append(
            f"| {names[variant]} | {spread(cpu[variant])} | {against} | {spread(threads[variant], 1)} | {extra} |"
        )
    sequential = figures["sequential_us_per_token"]
    added = {v: sequential[v] - sequential["off"] for v in VARIANTS[1:]}
    lines.append("")
    lines.append(
        f"Medians of {cpu['off']['n']} rounds (min to max). Turns: one variant's {figures['streams']:,} streams at a "
        "time, the whole server's CPU, its threads' contention and the shared machine's drift included. Mixed: "
        "the three variants' streams interleaved in one round of the same size, each read on the clock of the "
        "thread serving it, where the observers run. One reply at a time, in process: off "
        f"{sequential['off']:.1f} µs per token, metrics {sequential['metrics']:.1f} ({added['metrics']:+.1f}), "
        f"traces {sequential['traced']:.1f} ({added['traced']:+.1f}). A reply's figures are observed once, at "
        "its end; a token costs only the observers' calls."
    )
    return "\n".join(lines)


def _serve(tokens: int) -> None:
    from werkzeug.serving import ThreadedWSGIServer, make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    ThreadedWSGIServer.request_queue_size = 2048  # 1,000 connections arrive at once (set before it listens)
    server = make_server("127.0.0.1", 0, targets(tokens), threaded=True)
    server.daemon_threads = True
    print(server.server_port, flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="be the server (the benchmark starts it)")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 streams, one round")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--plot", help="draw the scrape's TTFT histogram and the CPU per token here (PNG)")
    args = parser.parse_args()
    if args.serve:
        return _serve(args.tokens)
    streams, runs = (100, 1) if args.quick else (args.streams, args.runs)
    report(run(runs=runs, streams=streams, tokens=args.tokens), describe, args.json, plot, args.plot)
    return None


if __name__ == "__main__":
    main()
