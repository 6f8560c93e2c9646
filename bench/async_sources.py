"""Async sources against their sync twins, in one run: Stop latency (cancel to the source's cleanup) and the
pieces per second the async bridge carries. `python -m bench.async_sources [--trials N] [--pieces N]`.

The sync twin is the real limit: a generator that waits on the cancel token (it wakes at once) and a plain
generator of pieces. Both run through the same stages as in the app (`kit.adapters.registry.adapt`, `start_pump`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from bench.measure import summary
from kit.adapters.registry import adapt as adapt_source
from kit.pipeline.cancel import CancelToken
from kit.pipeline.pump import Finished, Pump
from kit.pipeline.settings import StreamSettings
from kit.pipeline.streaming import start_pump

MESSAGES = [{"role": "user", "text": "hi"}]


def _sync_endless(cleaned: threading.Event) -> Callable[..., Iterator[str]]:
    def source(messages: list[dict[str, Any]], cancel: CancelToken) -> Iterator[str]:
        try:
            while not cancel.wait(0.005):
                yield "x "
        finally:
            cleaned.set()

    return source


def _async_endless(cleaned: threading.Event) -> Callable[..., AsyncIterator[str]]:
    async def source(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(0.005)
                yield "x "
        finally:
            cleaned.set()

    return source


def _first_piece(pump: Pump) -> None:
    while not isinstance(pump.get(5.0), str):
        pass


def stop_ms(make: Callable[[threading.Event], Any], trials: int) -> list[float]:
    """Milliseconds from `cancel.cancel()` (what Stop and a closed connection do) to the source's cleanup."""
    settings = StreamSettings(coalesce_ms=0)
    samples = []
    for _ in range(trials):
        cleaned, cancel = threading.Event(), CancelToken()
        pump = start_pump(adapt_source(make(cleaned))(MESSAGES, cancel), cancel, settings)
        _first_piece(pump)
        started = time.perf_counter()
        cancel.cancel()
        if not cleaned.wait(5.0):
            raise AssertionError("the source's cleanup did not run within 5 s of the cancel")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def pieces_per_s(source: Any, pieces: int) -> float:
    """Pieces per second from the source through the pump to its consumer."""
    cancel = CancelToken()
    pump = start_pump(adapt_source(source)(MESSAGES, cancel), cancel, StreamSettings(coalesce_ms=0))
    started, received = time.perf_counter(), 0
    while not isinstance(item := pump.get(5.0), Finished):
        received += isinstance(item, str)
    if received != pieces:
        raise AssertionError(f"received {received} pieces of {pieces}")
    return pieces / (time.perf_counter() - started)


def run(trials: int = 50, pieces: int = 50_000) -> dict[str, Any]:
    def sync_burst(messages: list[dict[str, Any]]) -> Iterator[str]:
        return (f"{n} " for n in range(pieces))

    async def async_burst(messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        for n in range(pieces):
            yield f"{n} "

    stop_ms(_async_endless, 3)  # warm-up: the loop starts, imports settle
    return {
        "stop_ms": {"sync": summary(stop_ms(_sync_endless, trials)), "async": summary(stop_ms(_async_endless, trials))},
        "pieces_per_s": {"sync": pieces_per_s(sync_burst, pieces), "async": pieces_per_s(async_burst, pieces)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--pieces", type=int, default=50_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = run(args.trials, args.pieces)
    for kind in ("sync", "async"):
        stop = results["stop_ms"][kind]
        print(
            f"{kind:>5}: Stop to cleanup median {stop['median']:.1f} ms, p99 {stop['p99']:.1f} ms, max "
            f"{stop['max']:.1f} ms ({stop['n']} trials); {results['pieces_per_s'][kind]:,.0f} pieces/s"
        )
    ratio = results["pieces_per_s"]["async"] / results["pieces_per_s"]["sync"]
    print(f"async carries {ratio:.2f} of the sync pieces/s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
