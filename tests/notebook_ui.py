"""What a reader does in JupyterLab's page, driven in chromium: log in to a hub, run notebook 01, chat in its
Deep Chat iframe, press Stop; and every HTTP response the page got, to check that nothing was refused."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.jupyter_servers import NOTEBOOK, Hub

# The scripted reply of notebook 01, its start and its end.
REPLY_START = "Streaming turns a long wait into a reply"
REPLY_END = "and code with two spaces"


@dataclass
class Responses:
    """Every response the browser context received (the page, the iframe, their fetches)."""

    seen: list[tuple[int, str]] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.context.on("response", lambda response: self.seen.append((response.status, response.url)))

    def refused(self) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.seen if status in (403, 404)]

    def to(self, fragment: str) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.seen if fragment in url]

    def exactly(self, url: str) -> list[int]:
        """The statuses of the responses to exactly this URL."""
        return [status for status, seen in self.seen if seen == url]


def log_in(page: Any, hub: Hub) -> None:
    """The hub's login form, as a user fills it; the hub then starts the user's server and opens it."""
    page.goto(f"{hub.url}/hub/login")
    page.locator("#username_input").fill(hub.user)
    page.locator("#password_input").fill(hub.password)
    page.locator("#login_submit").click()
    page.wait_for_url(re.compile(rf"{re.escape(hub.url)}/user/{hub.user}/lab"), timeout=180_000)


def run_notebook(page: Any, url: str, screenshot: Path) -> Any:
    """Open notebook 01 at `url` and run every cell but the last (which stops the chat server); returns
    the Deep Chat iframe's frame locator once its input answers. A failure leaves a screenshot."""
    page.goto(url)
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.last.wait_for()
    # Select the last cell, then Run > Run All Above Selected Cell. The keyboard selects it (a click can land
    # on another cell while the Markdown cells above are still changing height as they render); the status
    # bar confirms it.
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
        page.screenshot(path=screenshot)
        raise
    return chat


def _last_reply(chat: Any, replies_before: int) -> str:
    bubbles = chat.locator(".ai-message-text")
    return bubbles.last.inner_text() if bubbles.count() > replies_before else ""


def send(page: Any, chat: Any, text: str) -> int:
    """Type `text` into Deep Chat and send it; returns how many AI bubbles there were before."""
    replies_before = chat.locator(".ai-message-text").count()
    chat.locator("#text-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    return replies_before


def watch_reply(chat: Any, replies_before: int, until: str, timeout_s: float = 60.0) -> list[str]:
    """Each distinct state of the new AI bubble, polled until its text contains `until` or time runs out."""
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = _last_reply(chat, replies_before)
        if text and (not states or states[-1] != text):
            states.append(text)
        if until in text:
            break
        time.sleep(0.03)
    return states


def chat_and_stop(page: Any, chat: Any, text: str) -> str:
    """Send `text`, press Deep Chat's Stop as soon as the reply has begun; returns the bubble's text when the
    reply stopped growing."""
    replies_before = send(page, chat, text)
    watch_reply(chat, replies_before, until=" ")  # the first words are there: the stream runs
    chat.locator("#stop-icon").click()
    chat.locator("#stop-icon").wait_for(state="detached")
    shown = _last_reply(chat, replies_before)
    time.sleep(1.0)  # long enough for the rest of the reply, had it kept coming
    assert _last_reply(chat, replies_before) == shown, "the reply kept growing after Stop"
    return shown


def inspector_row(page: Any, prompt: str) -> Any:
    """The notebook inspector's table row of the request whose prompt is `prompt`."""
    inspector = page.locator(".jp-OutputArea-output").filter(has_text="Stream inspector")
    return inspector.locator("tr").filter(has_text=prompt)


@dataclass
class TutorialRun:
    """What a reader saw running notebook 01 and chatting in it."""

    iframe_src: str  # the URL `kit.notebook.show` chose for the browser
    states: list[str]  # each visible state of the reply, as it grew
    stopped_at: str  # the second reply's text when Stop was pressed
    stopped_end: str  # how the server saw that second stream end, in the notebook's inspector


def run_tutorial(page: Any, notebook_url: str, screenshot: Path) -> TutorialRun:
    """Run notebook 01 at `notebook_url`, chat once to the end, then chat again and press Stop; checks what
    every environment must show (a reply that grows in steps, a stopped source) and returns the rest."""
    page.set_default_timeout(90_000)
    chat = run_notebook(page, notebook_url, screenshot)
    iframe_src = page.locator("iframe[title='Deep Chat']").get_attribute("src") or ""

    states = watch_reply(chat, send(page, chat, "Hi from the lab"), until=REPLY_END)
    assert states, "no reply appeared in Deep Chat"
    assert states[-1].startswith(REPLY_START)
    assert "a list item" in states[-1] and REPLY_END in states[-1]
    assert len(states) >= 5, states  # it grew word by word, not in one jump
    assert chat.locator(".user-message-text").last.inner_text() == "Hi from the lab"
    # The notebook's inspector widget saw the browser's request, live, next to the chat.
    inspector_row(page, "Hi from the lab").filter(has_text="finished").wait_for(timeout=15_000)

    stopped_at = chat_and_stop(page, chat, "Stop me")
    assert stopped_at.startswith("Streaming") and REPLY_END not in stopped_at, stopped_at
    # How the server saw it end: "client_gone" when it learnt that the browser left and stopped the source.
    row = inspector_row(page, "Stop me").filter(has_text=re.compile("finished|failed|client_gone"))
    row.wait_for(timeout=15_000)
    end = row.locator("td").last.inner_text()
    return TutorialRun(iframe_src, states, stopped_at, end)
