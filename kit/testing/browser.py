"""Launch Debian's chromium under Playwright for browser tests and measurements (no browser download)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# As root chromium needs --no-sandbox; the rest stop it from calling home, which stalls a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """The system chromium, or a RuntimeError saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium is not installed: run `make system-deps` or `sudo apt-get install chromium`")


@contextmanager
def chromium_page(**context_options: Any) -> Iterator[Any]:
    """A fresh Playwright page in headless system chromium with its own empty profile."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kit-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, **context_options
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
