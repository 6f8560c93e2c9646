"""Deep Chat itself, in Debian's chromium, on the kit's own page."""

from __future__ import annotations

import time

from kit import create_app
from kit.pipeline.granularity import split_words
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource

REPLY = (
    "Streaming turns a long wait into a reply you can read while it is written, "
    "one word after another, until the whole answer stands in the bubble 👍🏽"
)


def send(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.locator("#text-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def watch_last_ai_bubble(page, until: str, timeout: float = 15.0) -> list[str]:  # type: ignore[no-untyped-def]
    """Every distinct text the last AI bubble showed until it equals `until`."""
    states: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        bubbles = page.locator(".ai-message-text")
        text = bubbles.last.inner_text() if bubbles.count() > 1 else ""  # the first bubble is the intro
        if text and (not states or states[-1] != text):
            states.append(text)
        if text == until:
            break
        time.sleep(0.02)
    return states


def test_deep_chat_shows_the_reply_growing_to_exactly_the_source_text(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(list(split_words([REPLY])), delay_s=0.06)
    server = serve(create_app(source, granularity="word"))
    with chromium_page() as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(server.url)
        send(page, "Tell me about streaming")
        states = watch_last_ai_bubble(page, until=REPLY)
        assert states[-1] == REPLY
        assert len(states) >= 5, states  # it grew through intermediate states, not in one jump
        assert all(REPLY.startswith(state.rstrip()) for state in states)
        assert page.locator(".user-message-text").last.inner_text() == "Tell me about streaming"
        # no font host, no CDN: the page asks nothing of anyone but the kit
        assert requested and all(url.startswith(server.url) for url in requested), requested
