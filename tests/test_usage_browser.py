"""The reply's token usage, its last event, in Debian's chromium: Deep Chat leaves the bubble as it is, and the
kit's page hands the usage to its scripts and shows it on the bubble."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from kit import create_app
from kit.testing.browser import chromium_page
from tests.helpers import wait_until
from tests.test_browser import send, watch_last_ai_bubble
from tests.test_metrics import openai_chunks
from tests.test_threads_browser import bubbles

ANSWER = "one two three four five six seven eight"


def paced(messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in openai_chunks(ANSWER):
        time.sleep(0.04)
        yield item


def _poll(page: Any, expression: str, timeout_s: float = 15.0) -> Any:
    # The page's CSP forbids eval, which wait_for_function needs: poll a function instead.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value is not None:
            return value
        time.sleep(0.05)
    raise TimeoutError(expression)


def test_deep_chat_ignores_the_usage_event_and_the_page_shows_it(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(paced, thread_store=False, coalesce_ms=0))
    with chromium_page() as page:
        page.goto(server.url)
        page.evaluate(
            "() => document.getElementById('chat').addEventListener('kit-usage', (e) => (window.kitUsage = e.detail))"
        )
        send(page, "count")
        states = watch_last_ai_bubble(page, until=ANSWER)
        assert _poll(page, "() => window.kitUsage") == {"input_tokens": 7, "output_tokens": 8, "model": "gpt-4o-mini"}
        time.sleep(0.3)  # anything the last event would do to the bubble has happened by now
        assert page.locator(".ai-message-text").all_inner_texts()[1:] == [ANSWER]
        assert page.locator(".error-message-text").count() == 0
        assert all(ANSWER.startswith(state) for state in states)
        bubble = page.locator(".ai-message-text").last
        assert bubble.get_attribute("title") == "7 tokens in, 8 tokens out"


def test_deep_chat_alone_leaves_the_bubble_as_it_is(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(paced, thread_store=False, coalesce_ms=0))
    with chromium_page() as page:
        page.goto(server.url)
        page.evaluate("() => { document.getElementById('chat').responseInterceptor = undefined; }")  # Deep Chat only
        send(page, "count")
        assert watch_last_ai_bubble(page, until=ANSWER)[-1] == ANSWER
        time.sleep(0.5)
        assert page.locator(".ai-message-text").all_inner_texts()[1:] == [ANSWER]
        assert page.locator(".error-message-text").count() == 0
        assert page.locator(".outer-message-container").count() == 3  # intro, question, answer: no empty bubble


def test_a_reload_restores_the_reply_with_its_usage_and_the_chat_goes_on(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(paced, thread_store=tmp_path / "t.sqlite", coalesce_ms=0))
    with chromium_page() as page:
        page.goto(server.url)
        assert wait_until(lambda: page.evaluate("() => window.kitThread && window.kitThread.restored") == 0)
        send(page, "count")
        assert watch_last_ai_bubble(page, until=ANSWER)[-1] == ANSWER
        shown = bubbles(page)
        page.reload()
        assert wait_until(lambda: bubbles(page) == shown, timeout=10), bubbles(page)
        send(page, "again")  # the restored history, `custom` included, is a valid request
        assert wait_until(lambda: bubbles(page) == [*shown, ("user", "again"), ("ai", ANSWER)], timeout=15), bubbles(
            page
        )
        assert page.locator(".error-message-text").count() == 0


# Deep Chat on its own, not streaming: the kit's page streams, so this one asks `POST chat` for one JSON reply.
PLAIN_PAGE = """<!doctype html><html><body>
<deep-chat id="chat" connect='{"url": "chat"}' errorMessages='{"displayServiceErrorMessages": true}'></deep-chat>
<script type="module" src="static/vendor/deepChat.bundle.js"></script></body></html>"""


def test_deep_chat_shows_the_json_reply_and_keeps_its_usage(serve) -> None:  # type: ignore[no-untyped-def]
    app = create_app(lambda messages: openai_chunks(ANSWER), thread_store=False)
    app.add_url_rule("/plain", "plain", lambda: PLAIN_PAGE)
    server = serve(app)
    with chromium_page() as page:
        page.goto(server.url + "plain")
        send(page, "count")  # POST chat: `{"text": ..., "custom": {"usage": ...}}`
        # The bubble appears before its text is set: wait for the text, then check it is the only bubble.
        assert wait_until(lambda: page.locator(".ai-message-text").all_inner_texts() == [ANSWER], timeout=30)
        assert page.locator(".error-message-text").count() == 0
        messages = page.evaluate("() => document.getElementById('chat').getMessages()")
        usage = {"input_tokens": 7, "output_tokens": 8, "model": "gpt-4o-mini"}
        assert messages[-1] == {"role": "ai", "text": ANSWER, "custom": {"usage": usage}}
