"""Pipeline capacity and added latency of one stream on loopback: the kit against the naive baseline."""

from __future__ import annotations

import re
from typing import Any

import httpx

from bench.measure import read_raw, server_process, summary

_STAMP = re.compile(r"<(\d+\.\d+)>")


def capacity(base: str, route: str, client: httpx.Client, expected_chars: int) -> dict[str, float]:
    """chars/s and events/s of one burst stream, request sent to last byte."""
    read = read_raw(f"{base}/{route}/chat-stream", client)
    events = read.events()
    chars = sum(len(str(event.get("text", ""))) for event in events)
    if chars != expected_chars:
        raise AssertionError(f"{route}: received {chars} chars, expected {expected_chars}")
    elapsed = read.chunks[-1][0] - read.started
    return {"chars_per_s": chars / elapsed, "events_per_s": len(events) / elapsed, "events": len(events)}


def added_latency_ms(base: str, route: str, client: httpx.Client) -> list[float]:
    """For every piece: client receive time minus the time the source yielded it, in ms."""
    latencies = []
    for at, text in read_raw(f"{base}/{route}/chat-stream", client).timed_texts():
        latencies.extend((at - float(stamp)) * 1000 for stamp in _STAMP.findall(text))
    return latencies


def run(
    runs: int = 3, chars: int = 100_000, rates: tuple[float, ...] = (20.0, 100.0, 1000.0), duration_s: float = 4.0
) -> dict[str, Any]:
    """Capacity (median of `runs`, ratios within each run) and latency distributions per rate."""
    results: dict[str, Any] = {"chars": chars, "runs": runs, "capacity": {}, "ratios": {}, "latency_ms": {}}
    args = ["--chars", str(chars), "--duration", str(duration_s), "--rates", *map(str, rates)]
    with server_process("bench.targets", *args) as server, httpx.Client(timeout=120) as client:
        base = server.url
        per_run: dict[str, list[dict[str, float]]] = {"kit": [], "per-piece": [], "naive": []}
        ratios: dict[str, list[float]] = {"kit_vs_naive_chars": [], "per_piece_vs_naive_chars": []}
        capacity(base, "kit", client, chars)  # warm-up: imports, first connection
        for _ in range(runs):
            measured = {route: capacity(base, route, client, chars) for route in per_run}
            for route, figures in measured.items():
                per_run[route].append(figures)
            naive = measured["naive"]["chars_per_s"]
            ratios["kit_vs_naive_chars"].append(measured["kit"]["chars_per_s"] / naive)
            ratios["per_piece_vs_naive_chars"].append(measured["per-piece"]["chars_per_s"] / naive)
        for route, figures_list in per_run.items():
            results["capacity"][route] = {
                key: summary([figures[key] for figures in figures_list]) for key in figures_list[0]
            }
        results["ratios"] = {name: summary(values) for name, values in ratios.items()}
        for rate in rates:
            for suffix, label in (("", "coalesced"), ("-off", "per-piece")):
                samples: list[float] = []
                for _ in range(runs):
                    samples.extend(added_latency_ms(base, f"stamped-{rate:g}{suffix}", client))
                results["latency_ms"][f"{rate:g}/s {label}"] = summary(samples)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(runs=2, chars=50_000, duration_s=2.0), indent=1))
