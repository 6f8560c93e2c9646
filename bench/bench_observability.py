"""The cost of metrics and traces: the server's CPU time per token on 1,000 concurrent streams, the same chat
with metrics off, with `metrics=True`, and with spans exported to an in-process (in-memory) exporter.

One server process serves the three variants under path prefixes, measured in turns in the same run; the
figure is each variant's CPU per token against "off" (the limit: the kit without any observability) from the
same round. CPU time (user + system, the server process's own clock) rather than wall time: the machine is
shared, and a stream's cost is what it takes from the cores. `python -m bench.bench_observability --quick` tries it out.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterator
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


def targets(tokens: int) -> Any:
    """The three variants under /off, /metrics and /traced, one WSGI app."""
    from flask import Flask
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from kit import create_app

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    common = {"coalesce_ms": 0, "thread_store": False, "tracing": False}
    mounts = {
        "/off": create_app(token_source(tokens), **common),
        "/metrics": create_app(token_source(tokens), **{**common, "metrics": True}),
        "/traced": create_app(token_source(tokens), **{**common, "tracing": provider}),
    }
    root = Flask("root")
    # The server's own CPU clock (every thread's, to the nanosecond): /proc's is in 10 ms ticks.
    root.add_url_rule("/cpu", "cpu", lambda: str(time.process_time()), methods=["GET"])
    return DispatcherMiddleware(root, mounts)


def cpu_seconds(base: str) -> float:
    """User + system CPU time the server process used so far (all its threads)."""
    return float(httpx.get(f"{base}/cpu", timeout=30).text)


async def _stream(client: httpx.AsyncClient, url: str, gate: asyncio.Semaphore) -> int:
    async with gate, client.stream("POST", url, json=chat_body("go"), headers=ACCEPT_HEADERS) as response:
        events = 0
        async for line in response.aiter_lines():
            events += line.startswith('data: {"text"')
        return events


async def _round(url: str, streams: int) -> int:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    gate = asyncio.Semaphore(streams)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        counts = await asyncio.gather(*(_stream(client, url, gate) for _ in range(streams)))
    return sum(counts)


def measure(base: str, variant: str, streams: int, tokens: int) -> float:
    """Microseconds of server CPU per token for `streams` concurrent streams of one variant."""
    before = cpu_seconds(base)
    received = asyncio.run(_round(f"{base}/{variant}/chat-stream", streams))
    if received != streams * tokens:
        raise AssertionError(f"{variant}: received {received} tokens, expected {streams * tokens}")
    time.sleep(0.2)  # threads finishing their streams' last bookkeeping
    return (cpu_seconds(base) - before) / received * 1e6


def sequential_us_per_token(replies: int, tokens: int) -> dict[str, float]:
    """The same three variants in this process, one reply after another (no thread contention to blur them):
    microseconds of CPU per token, median of 3."""
    from flask import Flask

    app = targets(tokens)
    clients = {variant: Flask.test_client(app.mounts[f"/{variant}"]) for variant in VARIANTS}
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
        scraped = scrape_histograms(f"{server.url}/metrics/metrics")
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "cpu_us_per_token": {variant: summary(values) for variant, values in per_token.items()},
        "ratio_to_off": {variant: summary(values) for variant, values in ratios.items()},
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
    """Two panels: the time-to-first-token histogram a scrape showed, and CPU per token of the three variants."""
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
    cpu = figures["cpu_us_per_token"]
    medians = [cpu[v]["median"] for v in VARIANTS]
    errors = [
        [m - cpu[v]["min"] for v, m in zip(VARIANTS, medians, strict=True)],
        [cpu[v]["max"] - m for v, m in zip(VARIANTS, medians, strict=True)],
    ]
    bars = right.bar(["off", "metrics=True", "traces"], medians, yerr=errors, color=["C7", "C0", "C2"], capsize=4)
    right.bar_label(bars, fmt="{:.0f}")
    right.set_title("server CPU µs per token (median, min-max over rounds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe(figures: dict[str, Any]) -> str:
    """The section's table: CPU per token of each variant and its ratio to the kit without observability."""
    cpu, ratio = figures["cpu_us_per_token"], figures["ratio_to_off"]
    lines = [
        f"| {figures['streams']:,} concurrent streams, {figures['tokens_per_stream']} tokens each "
        "| server CPU µs per token (median, min-max) | against off (median, min-max) |",
        "| --- | --- | --- |",
    ]
    names = {"off": "off (the limit)", "metrics": "metrics=True", "traced": "traces, in-memory exporter"}
    for variant in VARIANTS:
        c = cpu[variant]
        against = (
            "1"
            if variant == "off"
            else f"{ratio[variant]['median']:.2f} ({ratio[variant]['min']:.2f}-{ratio[variant]['max']:.2f})"
        )
        lines.append(f"| {names[variant]} | {c['median']:.0f} ({c['min']:.0f}-{c['max']:.0f}) | {against} |")
    sequential = figures["sequential_us_per_token"]
    extra = {v: sequential[v] - sequential["off"] for v in VARIANTS[1:]}
    lines.append("")
    lines.append(
        f"One reply at a time, where 1,000 threads' contention does not blur the CPU clock: off "
        f"{sequential['off']:.1f} µs per token, metrics {sequential['metrics']:.1f} ({extra['metrics']:+.1f}), "
        f"traces {sequential['traced']:.1f} ({extra['traced']:+.1f}). A reply's figures are observed once, at "
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
