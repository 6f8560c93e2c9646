"""The chat as a Blueprint inside an app that already exists: under prefixes, behind the app's own login gate,
beside the app's own routes and error handlers, several chats in one app."""

from __future__ import annotations

import httpx
import pytest
from flask import Flask, Response, abort, jsonify, request

from kit import StreamSettings, create_app, create_blueprint
from kit.serving.client import chat_body, stream_chat
from kit.testing.browser import chromium_page

TOKEN = "let-me-in"


def existing_app() -> Flask:
    """An app of the user's own: a login gate on every route but its login, a route and a 404 page of its own."""
    app = Flask("their_app")

    @app.before_request
    def login_required() -> None:
        if request.path != "/login" and request.cookies.get("session") != TOKEN:
            abort(401)

    @app.get("/login")
    def login() -> Response:
        response = Response("logged in")
        response.set_cookie("session", TOKEN)
        return response

    @app.get("/hello")
    def hello() -> Response:
        return jsonify(hello="world")

    @app.errorhandler(404)
    def their_404(error: Exception) -> tuple[str, int]:
        return "their own 404 page", 404

    app.register_blueprint(
        create_blueprint(lambda messages: ["Sup", "port"], granularity="word"), url_prefix="/support"
    )
    app.register_blueprint(create_blueprint(lambda messages: ["Sa", "les"], title="Sales"), url_prefix="/sales/chat")
    return app


@pytest.fixture
def server(serve):  # type: ignore[no-untyped-def]
    return serve(existing_app())


def test_each_prefix_streams_its_own_source_behind_the_apps_login(server) -> None:  # type: ignore[no-untyped-def]
    cookies = {"session": TOKEN}
    with httpx.Client(cookies=cookies, timeout=10) as client:
        assert stream_chat(server.url + "support/chat-stream", "hi", client=client).text == "Support"
        assert stream_chat(server.url + "sales/chat/chat-stream", "hi", client=client).text == "Sales"
    assert httpx.post(server.url + "support/chat", json=chat_body("hi"), cookies=cookies).json() == {"text": "Support"}
    # The app's own gate holds for the chat's routes too, and its own routes and 404 page stay its own.
    refused = httpx.post(server.url + "support/chat-stream", json=chat_body("hi"))
    assert refused.status_code == 401
    assert httpx.get(server.url + "hello", cookies=cookies).json() == {"hello": "world"}
    missing = httpx.get(server.url + "nowhere", cookies=cookies)
    assert missing.status_code == 404 and missing.text == "their own 404 page"


def test_the_chats_own_checks_apply_under_the_prefix(server) -> None:  # type: ignore[no-untyped-def]
    cookies = {"session": TOKEN}
    bad = httpx.post(server.url + "support/chat-stream", content=b"{not json", cookies=cookies)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    big = httpx.post(server.url + "support/chat", json=chat_body("x" * (5 * 1024 * 1024)), cookies=cookies)
    assert big.status_code == 413 and "limit" in big.json()["error"]
    foreign = httpx.post(
        server.url + "support/chat", json=chat_body("hi"), cookies=cookies, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    stop = httpx.post(server.url + "support/chat-stream/stop", content="short", cookies=cookies)
    assert stop.status_code == 400 and "stream id" in stop.json()["error"]
    page = httpx.get(server.url + "sales/chat/", cookies=cookies)
    assert page.status_code == 200 and "<title>Sales</title>" in page.text
    assert 'src="static/page.js"' in page.text  # relative: resolved under the prefix
    assert httpx.get(server.url + "sales/chat/static/page.js", cookies=cookies).status_code == 200


def test_an_unknown_option_is_refused_with_the_valid_names() -> None:
    with pytest.raises(TypeError, match=r"granularty.*the options are: .*granularity"):
        create_blueprint("Hi", granularty="word")
    with pytest.raises(ValueError, match="granularity must be one of"):
        create_app("Hi", settings=StreamSettings(), granularity="line")


def test_the_page_under_a_prefix_streams_in_chromium_after_the_apps_login(server) -> None:  # type: ignore[no-untyped-def]
    with chromium_page() as page:
        page.goto(server.url + "login")
        page.goto(server.url + "support/")
        page.locator("#text-input").click()
        page.keyboard.type("Hello")
        page.keyboard.press("Enter")
        page.locator(".ai-message-text").nth(1).filter(has_text="Support").wait_for(timeout=15_000)
