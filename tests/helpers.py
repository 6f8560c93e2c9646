"""Small helpers shared by the test modules."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

_VMRSS = re.compile(r"VmRSS:\s+(\d+) kB")


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `condition` until it is true or `timeout` seconds pass; its last answer, as a bool."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (this one by default); 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = _VMRSS.search(status)
    return int(match.group(1)) * 1024 if match else 0


def bubbles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the page shows them, without what the kit keeps beside them (issue 27: id, versions, feedback)."""
    return [{k: v for k, v in m.items() if k not in ("id", "versions", "feedback")} for m in messages]


def engine_metrics(url: str) -> dict[str, float]:
    """The engine's `/metrics`, parsed: {name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    figures = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model")
            figures[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return figures
