"""Model output is untrusted, and so are other pages: what a hostile reply or a foreign origin can do.

The kit's defences are layered: it rewrites dangerous link schemes in the stream (kit.pipeline.sanitize, on by
default), Deep Chat renders markdown with raw HTML off, the kit's page has a strict CSP, and chat
routes refuse other origins unless listed. The browser tests show each layer alone stops the attack,
and (the control) that with both link defences off the same attack does run, so the detector works.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask, Response
from hypothesis import given
from hypothesis import strategies as st

from kit import create_app
from kit.pipeline.sanitize import BLOCKED, neutralize_links, neutralize_text
from kit.pipeline.sources import Role
from kit.serving.client import chat_body, stream_chat
from kit.testing.browser import chromium_page
from tests.helpers import wait_until
from tests.test_branches_browser import click, edit, opened

DANGEROUS = [
    ("[x](javascript:alert(1))", "[x](about:blank#blocked:alert(1))"),
    ("[x](JaVaScRiPt:alert(1))", "[x](about:blank#blocked:alert(1))"),
    ("[x]( <javascript:alert(1)>)", "[x]( <about:blank#blocked:alert(1)>)"),
    ("[x](< javascript:alert(1)>)", "[x](< about:blank#blocked:alert(1)>)"),
    ("[x](\n  javascript:alert(1))", "[x](\n  about:blank#blocked:alert(1))"),
    ("[x](&#106;avascript:alert(1))", "[x](about:blank#blocked:alert(1))"),  # markdown decodes references
    ("[x](javascript&#58;alert(1))", "[x](about:blank#blocked:alert(1))"),
    ("[x](java&#x09;script&colon;alert(1))", "[x](about:blank#blocked:alert(1))"),  # browsers drop tabs
    ("[x](&#32;javascript:alert(1))", "[x](about:blank#blocked:alert(1))"),  # and leading spaces
    ("[x](javascript\\:alert(1))", "[x](about:blank#blocked:alert(1))"),  # a backslash-escaped colon
    ("<javascript:alert(1)>", "<about:blank#blocked:alert(1)>"),  # an autolink
    ("[r]: javascript:alert(1)", "[r]: about:blank#blocked:alert(1)"),  # a reference definition
    ("![i](javascript:alert(1))", "![i](about:blank#blocked:alert(1))"),
    ('<a href="javascript:alert(1)">', '<a href="about:blank#blocked:alert(1)">'),
    ("<a href=javascript:alert(1)>", "<a href=about:blank#blocked:alert(1)>"),
    ("[x](vbscript:msgbox(1))", "[x](about:blank#blocked:msgbox(1))"),
    ("[x](data:text/html,<script>alert(1)</script>)", "[x](about:blank#blocked:text/html,<script>alert(1)</script>)"),
    ("![i](data:image/svg+xml;base64,PHN2Zz4=)", "![i](about:blank#blocked:image/svg+xml;base64,PHN2Zz4=)"),
]

SAFE = [
    "JavaScript: a language; VBScript: another. Input data: 3 rows.",
    "[docs](https://developer.mozilla.org/javascript:)",
    "![logo](data:image/png;base64,iVBORw0KGgo=)",
    "a < b and c = d, x == 'javascript:void(0)' in prose",
    "const u = 'javascript:void(0)'; // code keeps its text",
    "<b>bold</b> [a]: https://example.com",
]


@pytest.mark.parametrize(("text", "expected"), DANGEROUS)
def test_dangerous_link_schemes_are_rewritten_even_split_at_any_point(text: str, expected: str) -> None:
    assert neutralize_text(text) == expected
    for cut in range(len(text) + 1):
        assert "".join(neutralize_links([text[:cut], text[cut:]])) == expected, cut
    assert "".join(neutralize_links(list(text))) == expected  # one character per piece


@pytest.mark.parametrize("text", SAFE)
def test_safe_text_and_image_data_urls_pass_unchanged(text: str) -> None:
    assert neutralize_text(text) == text
    assert "".join(neutralize_links(list(text))) == text


# Characters that build link positions, schemes, references and escapes, so examples hit the edge cases.
_HOSTILE_ALPHABET = "[]()<>=:;&#\\'\" \t\nxX0123456789abcdefghijklmnopqrstuvwyzJAVSCRIPTDimge/,+-"


@given(text=st.text(alphabet=_HOSTILE_ALPHABET, max_size=80), cuts=st.lists(st.integers(0, 80), max_size=6))
def test_any_cut_of_a_stream_gives_the_same_text_as_the_whole(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(cut for cut in cuts if cut <= len(text))})
    pieces = [text[start:end] for start, end in itertools.pairwise(bounds)]
    whole = neutralize_text(text)
    assert "".join(neutralize_links(pieces)) == whole
    assert neutralize_text(whole) == whole  # nothing dangerous is left for a second pass to find


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="]<="), min_size=1), max_size=8))
def test_text_without_a_link_position_is_never_held_back(pieces: list[str]) -> None:
    pulled: list[str] = []

    def source() -> Iterator[str]:
        for piece in pieces:
            pulled.append(piece)
            yield piece

    stream = neutralize_links(source())
    for index, piece in enumerate(pieces):
        assert next(stream) == piece
        assert len(pulled) == index + 1  # out before the next piece was even asked for: no added latency
    assert list(stream) == []


def test_a_role_marker_ends_a_held_link_position_and_passes_through() -> None:
    pieces = ["see [x](", Role("ai"), "javascript:alert(1))"]
    assert list(neutralize_links(pieces)) == ["see [x", "](", Role("ai"), "javascript:alert(1))"]


def test_an_endless_link_position_is_released_broken_after_a_bound() -> None:
    # Thousands of ignorable characters after `<` cannot stall the stream: the link position is broken.
    text = "<" + "&#9;" * 400 + "javascript:alert(1)>"
    out = "".join(neutralize_links(list(text)))
    assert BLOCKED in out and "javascript:alert" in out and out.index(BLOCKED) < out.index("javascript")


def test_the_kit_neutralises_by_default_on_both_routes_and_can_be_told_not_to(serve) -> None:  # type: ignore[no-untyped-def]
    reply = "Try [this](java" + "script:alert(1)) now"
    pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)]  # the scheme arrives in several pieces
    safe = serve(create_app(lambda messages: pieces, granularity="char"))
    assert stream_chat(safe.url + "chat-stream", "hi").text == "Try [this](about:blank#blocked:alert(1)) now"
    assert httpx.post(safe.url + "chat", json=chat_body("hi")).json()["text"] == neutralize_text(reply)
    raw = serve(create_app(lambda messages: pieces, neutralize_links=False))
    assert stream_chat(raw.url + "chat-stream", "hi").text == reply
    assert httpx.post(raw.url + "chat", json=chat_body("hi")).json()["text"] == reply


# ----------------------------------------------------------------------------------------------------
# In the browser: the real Deep Chat bundle renders a hostile reply.

HOSTILE_REPLY = (
    "Here is a script <script>window.__pwned = 'script'; alert('script')</script>, an image "
    "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">, and a link: "
    "[click me](javascript:window.__pwned='link';alert('link')). Also <javascript:alert('autolink')>."
)


def chat_watching_dialogs(page, url: str, text: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Open the chat, send `text`; returns the list that collects every dialog the context opens from now on."""
    dialogs: list[str] = []
    # Every page of the context, popups included; a dialog is the loudest sign a script ran.
    page.context.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    page.locator("#text-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    return dialogs


def render_hostile_reply(app: Flask, serve, bubble: str = ".ai-message-text"):  # type: ignore[no-untyped-def]
    """Chat once on the kit's page, click every link the reply rendered (in `bubble`), then open the first in
    place (as a user who opens it in the same tab would). Returns (hrefs, the page's flag, dialogs seen)."""
    server = serve(app)
    with chromium_page() as page:
        dialogs = chat_watching_dialogs(page, server.url, "say something nasty")
        links = page.locator(f"{bubble} a")
        links.first.wait_for(state="attached")  # a thinking bubble may already be folded
        page.wait_for_function("() => document.querySelector('deep-chat').shadowRoot.textContent.includes('Also')")
        if bubble != ".ai-message-text":  # a thinking bubble folds under the answer: open it to reach its links
            page.wait_for_function("() => document.querySelector('deep-chat').shadowRoot.textContent.includes('Done')")
            page.locator(bubble).click()
        hrefs = [links.nth(index).get_attribute("href") for index in range(links.count())]
        for index in range(links.count()):
            links.nth(index).click()
        time.sleep(0.5)
        flag_after_clicks = page.evaluate("() => window.__pwned ?? null")
        links.first.evaluate("link => { window.location.href = link.href }")
        time.sleep(0.5)
        flag = page.evaluate("() => window.__pwned ?? null") or flag_after_clicks
        return hrefs, flag, dialogs


def without_csp(app: Flask) -> Flask:
    @app.after_request
    def drop_csp(response: Response) -> Response:
        response.headers.pop("Content-Security-Policy", None)
        return response

    return app


def hostile_source(messages: list[dict[str, str]]) -> list[str]:
    return [HOSTILE_REPLY[index : index + 5] for index in range(0, len(HOSTILE_REPLY), 5)]


def test_a_hostile_reply_in_deep_chat_executes_nothing_and_its_links_are_defused(serve) -> None:  # type: ignore[no-untyped-def]
    hrefs, flag, dialogs = render_hostile_reply(create_app(hostile_source), serve)
    assert hrefs == ["about:blank#blocked:window.__pwned='link';alert('link')", "about:blank#blocked:alert('autolink')"]
    assert flag is None and dialogs == []


def hostile_thinker(messages: list[dict[str, str]]) -> list[str]:
    """The hostile reply as a reasoning model's thinking, in `<think>` tags torn across pieces, then an answer."""
    text = f"<think>{HOSTILE_REPLY}</think>Done."
    return [text[index : index + 5] for index in range(0, len(text), 5)]


THINKING_BUBBLE = ".deep-chat-outer-container-role-thinking .message-bubble"


def test_a_hostile_thinking_bubble_executes_nothing_and_its_links_are_defused(serve) -> None:  # type: ignore[no-untyped-def]
    hrefs, flag, dialogs = render_hostile_reply(create_app(hostile_thinker), serve, THINKING_BUBBLE)
    assert hrefs == ["about:blank#blocked:window.__pwned='link';alert('link')", "about:blank#blocked:alert('autolink')"]
    assert flag is None and dialogs == []


def test_control_a_thinking_bubble_with_both_defences_off_runs_the_same_link(serve) -> None:  # type: ignore[no-untyped-def]
    # The thinking bubble is rendered like the answer's: only the kit's defences stand between a link and a run.
    app = without_csp(create_app(hostile_thinker, neutralize_links=False))
    hrefs, flag, dialogs = render_hostile_reply(app, serve, THINKING_BUBBLE)
    assert hrefs[0].startswith("javascript:") and flag == "link" and dialogs == ["link"]
    assert "script" not in dialogs and "img" not in dialogs  # raw HTML stays off in the thinking bubble too


def test_with_links_left_live_the_page_csp_alone_still_stops_them(serve) -> None:  # type: ignore[no-untyped-def]
    hrefs, flag, dialogs = render_hostile_reply(create_app(hostile_source, neutralize_links=False), serve)
    assert hrefs[0].startswith("javascript:")  # the link is live: only the CSP stands in the way
    assert flag is None and dialogs == []


def test_control_with_both_defences_off_the_same_link_runs(serve) -> None:  # type: ignore[no-untyped-def]
    # Proves the detector detects: without the kit's rewrite and without the CSP, the link executes.
    hrefs, flag, dialogs = render_hostile_reply(without_csp(create_app(hostile_source, neutralize_links=False)), serve)
    assert hrefs[0].startswith("javascript:") and flag == "link" and dialogs == ["link"]
    # Deep Chat renders markdown with raw HTML off, so even here the <script> and <img> never ran.
    assert "script" not in dialogs and "img" not in dialogs


# ----------------------------------------------------------------------------------------------------
# Another origin: a page served from a second loopback server tries to use the kit.

FOREIGN_PAGE = "<!doctype html><title>elsewhere</title><p>a page on another origin</p>"


def foreign_fetch(page, url: str, content_type: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """fetch() from the foreign page; returns {status, text} or {failed: message}."""
    return page.evaluate(
        """async ([url, contentType, body]) => {
            try {
                const response = await fetch(url, {method: "POST", headers: {"Content-Type": contentType}, body});
                return {status: response.status, text: await response.text()};
            } catch (error) { return {failed: String(error)}; }
        }""",
        [url, content_type, '{"messages": [{"role": "user", "text": "use your model for free"}]}'],
    )


def test_a_page_on_another_origin_is_refused_unless_its_origin_is_listed(serve) -> None:  # type: ignore[no-untyped-def]
    elsewhere_app = Flask("elsewhere")
    elsewhere_app.add_url_rule("/", "page", lambda: Response(FOREIGN_PAGE, mimetype="text/html"))
    elsewhere = serve(elsewhere_app)
    origin = elsewhere.url.rstrip("/")
    calls: list[int] = []

    def source(messages: list[dict[str, str]]) -> list[str]:
        calls.append(1)
        return ["the model answered"]

    closed = serve(create_app(source))
    listed = serve(create_app(source, allowed_origins=[origin]))
    with chromium_page() as page:
        page.goto(elsewhere.url)
        for route in ("chat", "chat-stream"):
            # A JSON POST needs a preflight, which the kit refuses: the browser never sends the request.
            assert "failed" in foreign_fetch(page, closed.url + route, "application/json")
            # A "simple" POST skips the preflight and reaches the server, which refuses it before the source.
            assert "failed" in foreign_fetch(page, closed.url + route, "text/plain")
        assert calls == []
        allowed = foreign_fetch(page, listed.url + "chat", "application/json")
        assert allowed == {"status": 200, "text": '{"text":"the model answered"}\n'}
        streamed = foreign_fetch(page, listed.url + "chat-stream", "application/json")
        assert streamed["status"] == 200 and 'data: {"text": "the model answered"}' in str(streamed["text"])
        assert len(calls) == 2


# ----------------------------------------------------------------------------------------------------
# Approval cards (issue 18): tool names, arguments, descriptions and questions come from the model.

HOSTILE_NAME = "<img src=x onerror=\"window.__pwned='name';alert('name')\">"
HOSTILE_ARGS = {"<script>alert('key')</script>": "[x](javascript:window.__pwned='arg';alert('arg'))"}
HOSTILE_QUESTION = "<a href=\"javascript:alert('q')\" id=pwn>answer here</a><svg onload=alert('svg')>"


def hostile_interrupts_graph(saver: object) -> object:
    """Three branches that stop at once: a HITL-shaped request with hostile fields, a hostile question, and a
    question whose form has hostile labels and options."""
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.types import interrupt

    def review(state: MessagesState) -> dict[str, list[object]]:
        action = {"name": HOSTILE_NAME, "args": HOSTILE_ARGS, "description": HOSTILE_QUESTION}
        interrupt(
            {
                "action_requests": [action],
                "review_configs": [{"action_name": HOSTILE_NAME, "allowed_decisions": ["approve"]}],
            }
        )
        return {"messages": []}

    def ask(state: MessagesState) -> dict[str, list[object]]:
        interrupt(HOSTILE_QUESTION)
        return {"messages": []}

    def form(state: MessagesState) -> dict[str, list[object]]:
        fields = {HOSTILE_NAME: {"type": "string", "title": HOSTILE_QUESTION}, "pick": {"enum": [HOSTILE_NAME]}}
        interrupt({"question": HOSTILE_QUESTION, "schema": {"type": "object", "properties": fields}})
        return {"messages": []}

    graph = StateGraph(MessagesState)
    for name, node in [("review", review), ("ask", ask), ("form", form)]:
        graph.add_node(name, node)
        graph.add_edge(START, name)
    return graph.compile(checkpointer=saver)


def test_hostile_approval_cards_show_text_and_execute_nothing(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from langgraph.checkpoint.memory import InMemorySaver

    from kit.adapters.graphs import graph_source

    graph = hostile_interrupts_graph(InMemorySaver())
    # Without the CSP too: the cards themselves must never turn the model's text into markup.
    server = serve(without_csp(create_app(graph_source(graph), thread_store=tmp_path / "t.sqlite")))
    with chromium_page() as page:
        dialogs = chat_watching_dialogs(page, server.url, "go")
        page.locator("#kit-interrupts .kit-card").nth(2).wait_for()
        panel = page.locator("#kit-interrupts")
        assert panel.locator("img, script, a, svg").count() == 0
        text = panel.inner_text()
        assert HOSTILE_NAME in text and "<script>alert('key')</script>" in text and text.count(HOSTILE_QUESTION) == 4
        assert panel.locator("select option").all_inner_texts() == [HOSTILE_NAME]  # an enum's value, as text
        page.locator("#kit-interrupts .kit-card-tool").click()
        time.sleep(0.3)
        assert page.evaluate("() => window.__pwned ?? null") is None and dialogs == []


HOSTILE_EDIT = "<img src=x onerror=\"window.__pwned='edit';alert('edit')\"> and <b id=pwn>bold</b>"
HOSTILE_COMMENT = '<svg onload="window.__pwned=\'comment\'"></svg><a href="javascript:alert(1)">x</a>'


def test_a_hostile_edited_message_and_feedback_comment_show_as_text(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Without the CSP too: the page's buttons and editor must never turn what a person typed into markup.
    server = serve(without_csp(create_app(lambda messages: ["fine"], thread_store=tmp_path / "t.sqlite")))
    with chromium_page() as page:
        dialogs = chat_watching_dialogs(page, server.url, "hello")
        assert wait_until(lambda: page.locator(".kit-controls").count() == 2, timeout=15)
        asked = page.evaluate("window.kitThread.branch")[0]["id"]
        edit(page, asked, HOSTILE_EDIT, 2)
        answer = page.evaluate("window.kitThread.branch")[1]["id"]
        click(page, answer, ".kit-vote-up")
        click(page, answer, ".kit-comment-open")
        page.locator(".kit-comment-text").fill(HOSTILE_COMMENT)
        page.locator(".kit-comment-save").click()
        assert wait_until(lambda: page.locator(".kit-comment").count() == 1)
        for _ in range(2):  # live, then restored
            root = page.locator("deep-chat")
            assert root.locator(".user-message-text").last.inner_text() == HOSTILE_EDIT
            assert page.locator(".kit-comment").inner_text() == HOSTILE_COMMENT
            assert root.locator("img, script, b#pwn, .kit-controls a, .kit-comment *").count() == 0
            click(page, page.evaluate("window.kitThread.branch")[0]["id"], ".kit-edit-message")  # the editor: text too
            assert page.locator(".kit-edit-text").input_value() == HOSTILE_EDIT
            opened(page, server.url, 2)
        time.sleep(0.3)
        assert page.evaluate("() => window.__pwned ?? null") is None and dialogs == []
