"""`make lab`, the README's first command, brings JupyterLab up on the notebooks."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx

from kit.notebook.child_server import free_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_make_lab_serves_jupyterlab_on_the_notebooks() -> None:
    port = free_port()
    with tempfile.TemporaryFile() as log:
        # Its own session, so that stopping it stops make, jupyter and any kernel together.
        lab = subprocess.Popen(
            ["make", "lab", f"LAB_PORT={port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "BROWSER": "true"},
        )  # fmt: skip
        try:

            def answers() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/api", timeout=1).status_code == 200
                except httpx.TransportError:
                    return lab.poll() is not None  # stop waiting if it died

            assert wait_until(answers, timeout=90)
            log.seek(0)
            output = log.read().decode()
            assert lab.poll() is None, output[-2000:]
            assert f"http://127.0.0.1:{port}/lab" in output
            assert f"Serving notebooks from local directory: {ROOT / 'notebooks'}" in output
        finally:
            os.killpg(lab.pid, signal.SIGTERM)
            lab.wait(30)
