"""Scripted peer servers for the SDK rows of the compatibility table: the wire formats of the OpenAI Responses
API, Anthropic's Messages API and Ollama's chat and generate APIs, served on loopback so the real `openai`,
`anthropic` and `ollama` clients parse real streams into their own objects.

The peers stream one scripted answer (`PEER_ANSWER`, Japanese and English) a few characters at a time, and
count the streams a client abandoned midway, which is how a test sees that Stop reached the peer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response

PEER_ANSWER = "東京は日本の首都です。Tokyo is the capital of Japan, home to about fourteen million people."
PIECE_CHARS = 3
PIECE_DELAY_S = 0.02  # slow enough that a client closing after its first event leaves the peer midway


def pieces(text: str = PEER_ANSWER) -> list[str]:
    return [text[start : start + PIECE_CHARS] for start in range(0, len(text), PIECE_CHARS)]


class PeerStats:
    """How the peer's streams ended: read to the end, or abandoned by the client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.completed = 0
        self.abandoned = 0

    def record(self, *, completed: bool) -> None:
        with self._lock:
            if completed:
                self.completed += 1
            else:
                self.abandoned += 1


def _sse(event: dict[str, Any], *, named: bool) -> str:
    head = f"event: {event['type']}\n" if named else ""
    return f"{head}data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _responses_events() -> Iterator[dict[str, Any]]:
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "peer", "output": []}
    yield {"type": "response.created", "response": response}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    yield {"type": "response.output_item.added", "output_index": 0, "item": item}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    yield {"type": "response.content_part.added", **where, "part": part}
    for piece in pieces():
        yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **where, "text": PEER_ANSWER, "logprobs": []}
    yield {"type": "response.completed", "response": {**response, "status": "completed"}}


def _anthropic_events() -> Iterator[dict[str, Any]]:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "peer",
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1},
    }  # fmt: skip
    yield {"type": "message_start", "message": message}
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield {"type": "ping"}
    for piece in pieces():
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
    yield {"type": "content_block_stop", "index": 0}
    yield {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 20}}  # fmt: skip
    yield {"type": "message_stop"}


def _ollama_lines(key: str) -> Iterator[dict[str, Any]]:
    def line(text: str, done: bool) -> dict[str, Any]:
        body = {"message": {"role": "assistant", "content": text}} if key == "message" else {"response": text}
        return {"model": "peer", "created_at": "2026-11-24T00:00:00Z", **body, "done": done}

    for piece in pieces():
        yield line(piece, False)
    yield {**line("", True), "done_reason": "stop"}


def peer_app(stats: PeerStats) -> Flask:
    """One Flask app answering every peer route with `PEER_ANSWER`, whatever was asked."""
    app = Flask("sdk_peers")

    def streamed(events: Iterator[dict[str, Any]], render: Callable[[dict[str, Any]], str], mimetype: str) -> Response:
        def body() -> Iterator[str]:
            completed = False
            try:
                for event in events:
                    yield render(event)
                    time.sleep(PIECE_DELAY_S)
                completed = True
            finally:
                stats.record(completed=completed)

        return Response(body(), mimetype=mimetype)

    app.add_url_rule(
        "/v1/responses", "responses", lambda: streamed(_responses_events(), lambda e: _sse(e, named=True),
                                                       "text/event-stream"), methods=["POST"]
    )  # fmt: skip
    app.add_url_rule(
        "/v1/messages", "messages", lambda: streamed(_anthropic_events(), lambda e: _sse(e, named=True),
                                                     "text/event-stream"), methods=["POST"]
    )  # fmt: skip
    for route, key in (("/api/chat", "message"), ("/api/generate", "response")):
        app.add_url_rule(
            route, route, lambda key=key: streamed(_ollama_lines(key), lambda e: json.dumps(e) + "\n",
                                                   "application/x-ndjson"), methods=["POST"]
        )  # fmt: skip
    return app
