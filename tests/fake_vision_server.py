"""A fake OpenAI-compatible vision server, scripted, for the tests: no vision model runs on this machine.

`fake_vision_app(server)` answers `POST /v1/chat/completions` as a vision model's server would, streamed
(chat-completion chunks, then `data: [DONE]`) or not: it decodes the `image_url` parts of the last user message
(base64 data URLs) and describes what it got, each image's media type, size and SHA-256, so that a test sees
end to end that the bytes arrived intact. It keeps every request body and the images it decoded
(`FakeVisionServer.bodies`, `.images`). Scripted failures: `refuse` answers with an error response instead,
`empty` with a 200 and an empty stream (what llama-cpp-python's server sends when its chat template fails).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

from kit.pipeline.files import from_data_url

PIECE_CHARS = 4


@dataclass
class FakeVisionServer:
    """What the fake received, and the error it answers with when `refuse` is (status, JSON body)."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (media type, bytes) of each image part
    refuse: tuple[int, dict[str, Any]] | None = None
    empty: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any]) -> str:
        """Record the request; the description of its last user message's images."""
        user = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]
        parts = user["content"] if isinstance(user["content"], list) else []
        found = []
        for part in parts:
            if part.get("type") == "image_url":
                decoded = from_data_url(str(part["image_url"]["url"]))
                found.append(decoded if decoded is not None else ("not a data URL", b""))
        with self._lock:
            self.bodies.append(body)
            self.images.extend(found)
        if not found:
            return "I see no image."
        return " ".join(described(media_type, data) for media_type, data in found)


def described(media_type: str, data: bytes) -> str:
    """The fake's words for one image it received: what a test compares with the bytes it attached."""
    return f"I see an image ({media_type}, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})."


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake-vision",
             "choices": [choice]}  # fmt: skip
    return f"data: {json.dumps(chunk)}\n\n"


def fake_vision_app(server: FakeVisionServer) -> Flask:
    """The fake's Flask app (serve it with kit.serving.server.BackgroundServer; its API is at `url + "v1"`)."""
    app = Flask("fake_vision_server")

    @app.post("/v1/chat/completions")
    def chat_completions() -> Any:
        body = request.get_json()
        if server.refuse is not None:
            server.bodies.append(body)
            status, error = server.refuse
            return jsonify(error), status
        if server.empty:
            server.bodies.append(body)
            return Response("", mimetype="text/event-stream")
        text = server.answer(body)
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            return jsonify(id="chatcmpl-fake", object="chat.completion", created=0, model="fake-vision",
                           choices=[{"index": 0, "message": message, "finish_reason": "stop"}])  # fmt: skip

        def stream() -> Iterator[str]:
            yield _chunk({"role": "assistant", "content": ""})
            for start in range(0, len(text), PIECE_CHARS):
                yield _chunk({"content": text[start : start + PIECE_CHARS]})
            yield _chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return Response(stream(), mimetype="text/event-stream")

    return app
