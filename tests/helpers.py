"""Small helpers shared by the test modules."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

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


def without_ids(messages: list[dict[str, object]]) -> list[dict[str, object]]:
    """A thread's messages as Deep Chat bubbles, without the `id` and `versions` the messages route adds (issue 27)."""
    return [{key: value for key, value in message.items() if key not in ("id", "versions")} for message in messages]
