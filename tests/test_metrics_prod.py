"""Prometheus metrics under gunicorn: 50 replies of the embedded model across 4 worker processes (finished,
stopped, failing, refused), then one scrape of any worker counts them all."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kit.serving.client import ACCEPT_HEADERS, chat_body
from tests.prod_server import ProdServer

pytestmark = pytest.mark.timeout(400)

# What the 50 requests ask for (one more "long" is held open first, then stopped), and what each outcome counts.
PLAN = ["short"] * 36 + ["long"] * 4 + ["fail"] * 3 + ["busy"] * 3 + ["bad json"] * 3
EXPECTED = {"finished": 36, "stopped": 5, "failed": 3, "refused_503": 3, "refused_4xx": 3}
REQUESTS = len(PLAN) + 1


@dataclass
class Seen:
    """What one client saw of its reply."""

    status: int
    texts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _ask(url: str, kind: str) -> Seen:
    with httpx.Client(timeout=120) as client:
        if kind == "bad json":
            response = client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
            return Seen(response.status_code)
        with client.stream("POST", url, json=chat_body(kind), headers=ACCEPT_HEADERS) as response:
            seen = Seen(response.status_code)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                seen.texts += "text" in event
                seen.input_tokens += event.get("usage", {}).get("input_tokens", 0)
                seen.output_tokens += event.get("usage", {}).get("output_tokens", 0)
                if kind == "long" and seen.texts:
                    break  # the Stop button: the client leaves after the first text
            return seen


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, summed over labels other than `outcome` and `gen_ai_token_type`."""
    text = httpx.get(url + "metrics", timeout=10, headers={"Connection": "close"}).text
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kept = {key: value for key, value in sample.labels.items() if key in ("outcome", "gen_ai_token_type")}
            name = sample.name + "".join(f"{{{key}={value}}}" for key, value in sorted(kept.items()))
            totals[name] += sample.value
    return dict(totals)


def _settled(url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """The scrape once every reply is counted and no stream is open (a stopped reply ends at its next write)."""
    deadline = time.monotonic() + timeout_s
    while True:
        figures = scrape(url)
        replies = sum(value for name, value in figures.items() if name.startswith("kit_replies_total"))
        idle = figures.get("kit_active_streams", 1) == 0 and figures.get("kit_engine_busy_slots", 1) == 0
        if (replies >= REQUESTS and idle) or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def test_one_scrape_counts_every_worker() -> None:
    with ProdServer("--app", "tests.prod_server:metrics_app()", "--workers", "4", "--threads", "8") as server:
        url = server.url + "chat-stream"
        # A reply held open after its first text: the live gauges of some worker show it in a scrape of any.
        with (
            httpx.Client(timeout=120) as client,
            client.stream("POST", url, json=chat_body("long"), headers=ACCEPT_HEADERS) as held,
        ):
            lines = held.iter_lines()  # kept open: closing this iterator would close the stream
            assert any(line.startswith('data: {"text"') for line in lines)
            during = scrape(server.url)
        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(lambda kind: _ask(url, kind), PLAN))
        figures = _settled(server.url)
        again = [scrape(server.url) for _ in range(6)]  # new connections: other workers answer
    assert during["kit_active_streams"] >= 1 and during["kit_engine_busy_slots"] >= 1, during
    assert Counter(s.status for s in seen) == {200: 43, 503: 3, 400: 3}, server.log_tail()
    for outcome, count in EXPECTED.items():
        assert figures.get(f"kit_replies_total{{outcome={outcome}}}") == count, (outcome, figures)
    # The outcomes add up: every request counted once, under one of the five outcomes.
    outcomes = {name: value for name, value in figures.items() if name.startswith("kit_replies_total")}
    assert sum(outcomes.values()) == REQUESTS and len(outcomes) == len(EXPECTED), outcomes
    # One TTFT observation per reply that sent text (finished, stopped after their first text, failed after it).
    sent_text = sum(1 for s in seen if s.texts) + 1  # the held reply sent text too
    assert figures["gen_ai_server_time_to_first_token_seconds_count"] == sent_text == 44
    # The tokens counted are those the engine reported to the clients (each finished reply's last event).
    reported = sum(s.output_tokens for s in seen)
    assert reported > 36
    assert figures["gen_ai_client_token_usage_sum{gen_ai_token_type=output}"] == reported
    assert figures["gen_ai_client_token_usage_count{gen_ai_token_type=output}"] == 36
    assert figures["gen_ai_client_token_usage_sum{gen_ai_token_type=input}"] == sum(s.input_tokens for s in seen) > 0
    # Time per output token: one observation per finished reply of more than one token.
    assert figures["gen_ai_server_time_per_output_token_seconds_count"] == sum(1 for s in seen if s.output_tokens > 1)
    assert figures["kit_engine_generated_tokens_total"] >= reported  # stopped and failed replies generated too
    durations = {
        name: value
        for name, value in figures.items()
        if name.startswith("gen_ai_server_request_duration_seconds_count")
    }
    assert sum(durations.values()) == REQUESTS
    assert durations["gen_ai_server_request_duration_seconds_count{outcome=stopped}"] == EXPECTED["stopped"]
    assert figures["kit_active_streams"] == 0
    assert figures["kit_engine_queue_depth"] == 0
    assert figures["kit_engine_busy_slots"] == 0
    # Two slots per loaded engine: several workers' engines are summed in one scrape.
    assert figures["kit_engine_slots"] >= 4
    for other in again:
        assert other["kit_replies_total{outcome=finished}"] == 36
        assert other["gen_ai_server_time_to_first_token_seconds_count"] == 44


def test_kit_serve_prod_serves_metrics_for_its_demos(tmp_path: Path) -> None:
    store = {"KIT_THREAD_STORE": str(tmp_path / "threads.sqlite")}
    with ProdServer("--workers", "2", "--delay-ms", "0", env=store) as server:
        assert httpx.post(server.url + "chat", json=chat_body("hi"), timeout=30).status_code == 200
        figures = scrape(server.url)
    assert figures["kit_replies_total{outcome=finished}"] == 1
    assert figures["gen_ai_server_request_duration_seconds_count{outcome=finished}"] == 1
