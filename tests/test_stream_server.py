"""The stream route on a real server on 127.0.0.1, read by a real SSE client (httpx + httpx-sse)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask, Response
from httpx_sse import connect_sse

from kit import ServiceBusy, create_app
from kit.pipeline.pump import live_producers
from kit.pipeline.streaming import INTERRUPTED
from kit.serving.client import chat_body, iter_stream, stream_chat
from kit.testing.fakes import ScriptedSource
from tests.helpers import wait_until


def mixed_text(length: int, seed: int = 7) -> str:
    samples = ["日本語の文章", "👩‍👩‍👧‍👦", "🇯🇵", "👍🏽", "e\u0301", "مرحبا بالعالم", "שלום", "Zürich ", "\n", "naïve "]
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(samples))
    return "".join(parts)


def test_50k_mixed_script_chars_round_trip_exactly_with_httpx_sse(serve) -> None:  # type: ignore[no-untyped-def]
    text = mixed_text(50_000)
    server = serve(create_app(lambda messages: iter(text), granularity="char"))
    received: list[str] = []
    with (
        httpx.Client(timeout=60) as client,
        connect_sse(client, "POST", server.url + "chat-stream", json=chat_body("go")) as source,
    ):
        assert source.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert source.response.headers["cache-control"] == "no-store"
        assert source.response.headers["x-accel-buffering"] == "no"
        for event in source.iter_sse():
            received.append(event.json()["text"])
    assert "".join(received) == text
    assert len(received) > 1  # it streamed, in more than one event


def test_reply_of_10000_pieces_has_no_recursion_limit(serve) -> None:  # type: ignore[no-untyped-def]
    pieces = [f"{i} " for i in range(10_000)]
    server = serve(create_app(lambda messages: pieces, coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "count")
    assert reply.text == "".join(pieces)
    assert len(reply.events) == 10_000


def test_error_mid_stream_is_one_final_event_after_the_intact_partial_text(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["Hello", " wor", "ld"], fail_after=2)
    server = serve(create_app(source))
    reply = stream_chat(server.url + "chat-stream", "hi")
    assert reply.status == 200
    assert reply.text == "Hello wor"
    assert reply.events[-1] == {"error": INTERRUPTED}
    assert reply.errors == [INTERRUPTED]


def test_error_before_the_first_byte_gets_an_http_status(serve) -> None:  # type: ignore[no-untyped-def]
    def busy(messages: list[dict[str, str]]) -> list[str]:
        raise ServiceBusy("the model is busy: 8 requests are waiting; try again in a minute")

    server = serve(create_app(busy))
    response = httpx.post(server.url + "chat-stream", json=chat_body("hi"))
    assert response.status_code == 503
    assert response.json() == {"error": "the model is busy: 8 requests are waiting; try again in a minute"}


def test_heartbeats_flow_during_3_s_of_silence_and_dispatch_nothing(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["after the silence"], silence_before_s=3.0)
    server = serve(create_app(source, heartbeat_s=0.5))
    reply = stream_chat(server.url + "chat-stream", "hi")
    assert reply.text == "after the silence"
    assert reply.heartbeats >= 4
    assert all(item.raw == ": ping" for item in reply.items if item.is_heartbeat)
    first_heartbeat = next(item.at for item in reply.items if item.is_heartbeat)
    assert first_heartbeat - reply.started < 1.5  # headers and beats flow before the first token


def test_disconnect_cancels_the_source_within_a_heartbeat(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["tick "] * 1000, delay_s=0.05)
    server = serve(create_app(source, heartbeat_s=1.0))
    for item in iter_stream(server.url + "chat-stream", chat_body("go")):
        if getattr(item, "payload", None):
            break  # leave after the first event: the client closes the connection
    assert wait_until(lambda: source.cancelled == 1, timeout=1.0)
    assert source.closed == 1 and source.completed == 0


def test_silent_source_is_cancelled_when_the_client_leaves(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["never seen"], silence_before_s=30.0)
    server = serve(create_app(source, heartbeat_s=1.0))
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + "chat-stream", json=chat_body("hi")) as response,
    ):
        assert response.status_code == 200
    assert wait_until(lambda: source.cancelled == 1, timeout=1.0)


def test_no_producer_outlives_its_request_after_many_aborts(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["x"] * 10_000, delay_s=0.002)
    server = serve(create_app(source, heartbeat_s=0.5))
    before = live_producers()
    rng = random.Random(3)

    def abort_after(events: int) -> None:
        seen = 0
        for item in iter_stream(server.url + "chat-stream", chat_body("go")):
            seen += getattr(item, "payload", None) is not None
            if seen >= events:
                return

    threads = [threading.Thread(target=abort_after, args=(rng.randint(1, 20),)) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_until(lambda: live_producers() == before, timeout=3.0), live_producers()
    assert source.started == 40 and source.closed == 40 and source.completed == 0
    assert httpx.get(server.url + "healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("body", "kwargs", "status", "fragment"),
    [
        (b"not json", {"headers": {"content-type": "application/json"}}, 400, "must be JSON"),
        (b'{"messages": "hi"}', {"headers": {"content-type": "application/json"}}, 400, "non-empty list"),
        (b'{"messages": [{"role": "user", "text": 5}]}', {}, 400, "text must be a string"),
        (b'{"messages": [{"role": "user", "text": "hi"}]}' + b" " * 5_000_000, {}, 413, "limit"),
    ],
)
def test_bad_requests_get_deep_chat_errors_and_the_server_stays_up(serve, body, kwargs, status, fragment) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app("fine"))
    response = httpx.post(server.url + "chat-stream", content=body, **kwargs)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]
    assert stream_chat(server.url + "chat-stream", "still there?").text == "fine"


def test_unknown_route_and_method(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(create_app("fine"))
    assert httpx.post(server.url + "nope").status_code == 404
    response = httpx.get(server.url + "chat-stream")
    assert response.status_code == 405 and "GET" in response.json()["error"]


def test_multipart_request_with_files_reaches_the_source(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[dict[str, object]]] = []

    def source(messages: list[dict[str, object]]) -> list[str]:
        seen.append(messages)
        return ["got it"]

    server = serve(create_app(source))
    response = httpx.post(
        server.url + "chat",
        data={"message1": '{"role": "user", "text": "what is this?"}'},
        files={"files": ("notes.txt", b"hello", "text/plain")},
    )
    assert response.json() == {"text": "got it"}
    (attachment,) = seen[0][-1]["files"]
    assert {key: attachment[key] for key in ("name", "type", "size", "kind", "content")} == {
        "name": "notes.txt",
        "type": "text/plain",
        "size": 5,
        "kind": "text",
        "content": "hello",
    }
    assert seen[0][-1]["text"] == "what is this?"


def test_other_origins_are_refused_unless_listed(serve) -> None:  # type: ignore[no-untyped-def]
    open_app = serve(create_app("fine", allowed_origins=["http://allowed.example"]))
    refused = httpx.post(open_app.url + "chat", json=chat_body("hi"), headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "allowed_origins" in refused.json()["error"]
    allowed = httpx.post(open_app.url + "chat", json=chat_body("hi"), headers={"Origin": "http://allowed.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
    same = httpx.post(open_app.url + "chat", json=chat_body("hi"), headers={"Origin": open_app.url.rstrip("/")})
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


def test_a_client_leaving_mid_stream_prints_no_server_traceback(serve, capfd) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["tick "] * 1000, delay_s=0.01)
    server = serve(create_app(source, coalesce_ms=0))
    for _ in range(5):
        items = iter_stream(server.url + "chat-stream", chat_body("go"))
        next(items), next(items)  # headers and one event, then the client goes away
        items.close()
    assert wait_until(lambda: source.cancelled == 5, timeout=3.0)
    server.stop()
    assert "Exception occurred" not in capfd.readouterr().err


def test_a_streamed_route_that_leaves_its_request_body_unread_still_ends(serve) -> None:  # type: ignore[no-untyped-def]
    # Any Flask app served by kit.serving.server (a peer, a user's own route), not only the kit's: werkzeug drains the
    # unread body after the reply, so the last chunk must already be on its way to the client by then.
    def slow_pieces() -> Iterator[str]:
        for piece in "abc":
            time.sleep(0.05)
            yield piece

    app = Flask("unread_body")
    app.add_url_rule("/stream", "stream", lambda: Response(slow_pieces()), methods=["POST"])
    server = serve(app)
    host, port = server.url.removeprefix("http://").rstrip("/").split(":")
    body = b'{"unread": true}'
    head = f"POST /stream HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(head)
        time.sleep(0.05)  # the body arrives while the reply streams, as it may from any client
        client.sendall(body)
        received = b""
        while not received.endswith(b"0\r\n\r\n"):
            chunk = client.recv(4096)  # raises TimeoutError after 5 s if the last chunk is held back
            assert chunk, f"connection closed before the last chunk: {received!r}"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and b"1\r\na\r\n" in received


def test_post_chat_runs_the_same_pipeline_as_the_stream(serve) -> None:  # type: ignore[no-untyped-def]
    # Pieces that each stage changes: bytes cut inside a character (decoding), a lone surrogate (the scrub),
    # a javascript: link cut across pieces (the link neutraliser), a steps bubble (only the answer is the reply).
    from kit import Role

    def source(messages: list[dict[str, object]]) -> Iterator[object]:
        yield from [b"caf\xc3", b"\xa9 ", "\ud800ok ", "[click](java", "script:alert(1)) ", Role("steps"), "step"]
        yield from [Role("ai"), "done"]

    server = serve(create_app(source, granularity="word"))
    streamed = stream_chat(server.url + "chat-stream", "hi")
    answered = httpx.post(server.url + "chat", json=chat_body("hi")).json()["text"]
    assert streamed.text_of("ai") == answered
    assert answered.startswith("café ") and "\ud800" not in answered and "javascript:" not in answered
    assert answered.endswith("done") and "step" not in answered


def test_post_chat_reports_a_failure_mid_reply_as_a_json_error(serve) -> None:  # type: ignore[no-untyped-def]
    def source(messages: list[dict[str, object]]) -> Iterator[str]:
        yield "partial "
        raise RuntimeError("boom")

    server = serve(create_app(source))
    response = httpx.post(server.url + "chat", json=chat_body("hi"))
    assert response.status_code == 500 and response.json() == {"error": INTERRUPTED}
    assert httpx.get(server.url + "healthz").json() == {"status": "ok"}
