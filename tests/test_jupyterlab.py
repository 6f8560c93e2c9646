"""The tutorial itself, as a reader meets it: notebook 01 run in JupyterLab, chatting in its Deep Chat iframe."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kit.browser import chromium_page
from kit.child_server import ChildServer, free_port

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "01_word_streaming.ipynb"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[ChildServer, str]]:
    """JupyterLab, headless, on loopback with a token, serving a copy of the notebooks (running cells in the
    browser must not rewrite the committed files); its kernels and the server are stopped at the end."""
    shutil.copy(NOTEBOOK, tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    # Settings, workspaces and runtime files of this run only, so a user's own JupyterLab state is neither
    # read nor changed.
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / ".workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime"),
    }
    news = tmp_path / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast over the page
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
        # No calls to the internet (closed network): no news feed, no update check.
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    log = tmp_path / "jupyterlab.log"
    with ChildServer(
        command, f"http://127.0.0.1:{port}", f"/api/status?token={token}", env=env, log_path=log
    ) as server:
        yield server, token
        auth = {"token": token}
        for kernel in httpx.get(f"{server.url}/api/kernels", params=auth).json():  # the notebook's kernel
            assert httpx.delete(f"{server.url}/api/kernels/{kernel['id']}", params=auth).status_code == 204


@pytest.mark.timeout(300)
def test_notebook_01_runs_in_jupyterlab_and_its_deep_chat_streams_a_reply(lab: tuple[ChildServer, str]) -> None:
    server, token = lab
    with chromium_page(viewport={"width": 1400, "height": 1000}) as page:
        page.set_default_timeout(90_000)
        page.goto(f"{server.url}/lab/tree/{NOTEBOOK.name}?token={token}")
        cells = page.locator(".jp-Notebook .jp-Cell")
        cells.last.wait_for()
        # Run everything but the last cell, which stops the server: select the last cell, then use the menu's
        # Run > Run All Above Selected Cell. The keyboard selects it (a click can land on another cell while
        # the Markdown cells above are still changing height as they render); the status bar confirms it.
        count = len(json.loads(NOTEBOOK.read_text())["cells"])  # the page renders cells lazily: count them here
        cells.first.click()
        page.keyboard.press("Escape")
        last_selected = page.get_by_text(re.compile(rf"^Cell {count}/{count}$"))
        for _ in range(3 * count):
            if last_selected.count():
                break
            page.keyboard.press("ArrowDown")
        last_selected.wait_for(timeout=5_000)
        page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
        page.get_by_text("Run All Above Selected Cell").click()

        chat = page.frame_locator("iframe[title='Deep Chat']")
        try:
            chat.locator("#text-input").click()
        except Exception:
            page.screenshot(path=server.log_path.with_suffix(".png"))  # beside its log, for whoever debugs this
            raise
        page.keyboard.type("Hi from the lab")
        page.keyboard.press("Enter")
        states: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bubbles = chat.locator(".ai-message-text")
            text = bubbles.last.inner_text() if bubbles.count() > 1 else ""  # the first bubble is the intro
            if text and (not states or states[-1] != text):
                states.append(text)
            if "and code with two spaces" in text:
                break
            time.sleep(0.03)

        assert states, "no reply appeared in Deep Chat"
        assert states[-1].startswith("Streaming turns a long wait into a reply")
        assert "a list item" in states[-1] and "and code with two spaces" in states[-1]
        assert len(states) >= 5, states  # it grew word by word, not in one jump
        assert chat.locator(".user-message-text").last.inner_text() == "Hi from the lab"

        # The notebook's inspector widget saw the browser's request, live, next to the chat.
        inspector = page.locator(".jp-OutputArea-output").filter(has_text="Stream inspector")
        row = inspector.locator("tr").filter(has_text="Hi from the lab")
        row.filter(has_text="finished").wait_for(timeout=15_000)
        assert row.count() == 1
