"""Set-up time of the hosted-notebook test: configurable-http-proxy from npm on a fresh machine (empty npm
cache), then JupyterHub's start and the user's single-user server's spawn, as the test meets them.

Run: `.venv/bin/python -m bench.hub_setup` (needs the npm registry; prints the figures).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.measure import summary
from tests.jupyter_servers import configurable_http_proxy, jupyterhub, start_user_server

CHP_VERSION = "5.3.0"  # as pinned in scripts/ensure-configurable-http-proxy.sh


def npm_install_s() -> float:
    """configurable-http-proxy installed into an empty folder with an empty npm cache."""
    with tempfile.TemporaryDirectory(prefix="kit-bench-npm-") as folder:
        started = time.perf_counter()
        subprocess.run(
            ["npm", "install", "--cache", f"{folder}/cache", "--prefix", f"{folder}/node", "--no-save",
             "--no-audit", "--no-fund", "--loglevel=error", f"configurable-http-proxy@{CHP_VERSION}"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        return time.perf_counter() - started


def hub_start_s() -> tuple[float, float]:
    """Seconds until the hub answers, then until the user's server is ready (both on loopback)."""
    configurable_http_proxy()  # installed beforehand, as `make hub-deps` does
    with tempfile.TemporaryDirectory(prefix="kit-bench-hub-") as folder:
        started = time.perf_counter()
        with jupyterhub(Path(folder)) as hub:
            hub_up = time.perf_counter() - started
            start_user_server(hub)
            return hub_up, time.perf_counter() - started - hub_up


def _line(what: str, values: list[float]) -> str:
    figures = summary(values)
    spread = f"min {figures['min']:.1f}, max {figures['max']:.1f}, n={len(values)}"
    return f"{what}: median {figures['median']:.1f} s ({spread})"


def main(runs: int = 3) -> None:
    npm = [npm_install_s() for _ in range(runs)]
    hub = [hub_start_s() for _ in range(runs)]
    print(_line(f"configurable-http-proxy@{CHP_VERSION} npm install, empty cache", npm))
    print(_line("JupyterHub up (proxy, hub, database)", [up for up, _ in hub]))
    print(_line("single-user server spawned and ready", [spawn for _, spawn in hub]))


if __name__ == "__main__":
    main()
