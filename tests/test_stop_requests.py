"""Stop by stream id: the kit's page names each stream and posts its id to `POST /chat-stream/stop` when Deep
Chat aborts it, so Stop reaches the source even behind a proxy that hides the browser's disconnect."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from flask import Response, request

from kit import create_app
from kit.serving.client import Received, chat_body, iter_stream
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource
from kit.web.blueprint import STREAM_ID_HEADER
from tests.helpers import wait_until

STREAM_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def ticking_source() -> ScriptedSource:
    return ScriptedSource(["tick "] * 400, delay_s=0.05)  # 20 s if nobody stops it


def test_a_stop_request_ends_a_stream_whose_client_stays_connected(serve) -> None:  # type: ignore[no-untyped-def]
    source = ticking_source()
    server = serve(create_app(source, heartbeat_s=1.0))
    received: list[Received] = []
    with httpx.Client(timeout=10) as client:
        items = iter_stream(
            server.url + "chat-stream", chat_body("go"), client=client, headers={STREAM_ID_HEADER: STREAM_ID}
        )
        for item in items:
            received.append(item)
            if isinstance(item, Received) and item.payload:
                break
        stopped = httpx.post(server.url + "chat-stream/stop", content=STREAM_ID)
        assert stopped.json() == {"stopped": True}
        started = time.monotonic()
        received += list(items)  # the client keeps reading: the server ends the stream
        assert time.monotonic() - started < 2.0
    assert wait_until(lambda: source.cancelled == 1, timeout=1.0)
    text = "".join(item.payload.get("text", "") for item in received if isinstance(item, Received) and item.payload)
    assert text.startswith("tick ") and len(text) < 400 * 5
    assert not any(item.payload and "error" in item.payload for item in received if isinstance(item, Received))
    # The same id again, or one never seen: nothing is running under it.
    assert httpx.post(server.url + "chat-stream/stop", content=STREAM_ID).json() == {"stopped": False}


def test_a_malformed_stop_request_gets_a_400_and_the_server_stays_up(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app(lambda messages: ["Hello"]))
    for body in ("", "short", "x" * 65, "../../etc", "id with spaces and more than sixteen"):
        response = httpx.post(server.url + "chat-stream/stop", content=body)
        assert response.status_code == 400 and "stream id" in response.json()["error"], (body, response.text)
    assert httpx.post(server.url + "chat", json=chat_body("hi")).json() == {"text": "Hello"}


def test_stop_in_chromium_posts_the_stream_id_and_the_server_stops_that_stream(serve) -> None:  # type: ignore[no-untyped-def]
    # Through jupyter-server-proxy, which hides the disconnect, tests/test_hosted_notebooks.py shows the same.
    source = ticking_source()
    app = create_app(source, granularity="word", heartbeat_s=1.0)
    stops: list[tuple[str, Any]] = []  # seen by the server: a beacon's response is not always reported to the page

    @app.after_request
    def record_stops(response: Response) -> Response:
        if request.path.endswith("/stop"):
            stops.append((request.get_data(as_text=True), response.get_json()))
        return response

    server = serve(app)
    with chromium_page() as page:
        page.goto(server.url)
        page.locator("#text-input").click()
        page.keyboard.type("Stop me")
        page.keyboard.press("Enter")
        page.locator(".ai-message-text").nth(1).filter(has_text="tick").wait_for(timeout=15_000)
        page.locator("#stop-icon").click()
        assert wait_until(lambda: source.cancelled == 1, timeout=10.0), "Stop did not reach the source"
        assert wait_until(lambda: len(stops) == 1, timeout=10.0), stops
    stream_id, answer = stops[0]
    assert re.fullmatch("[0-9a-f]{32}", stream_id), stream_id
    assert answer == {"stopped": True}  # it found the stream still running under that id, and stopped it
