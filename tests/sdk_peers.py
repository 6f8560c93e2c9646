"""Scripted peer servers for the SDK rows of the compatibility table: the wire formats of the OpenAI Responses
API, Anthropic's Messages API and Ollama's chat and generate APIs, served on loopback so the real `openai`,
`anthropic` and `ollama` clients parse real streams into their own objects.

The peers stream one scripted answer (`PEER_ANSWER`, Japanese and English) a few characters at a time, and
count the streams a client abandoned midway, which is how a test sees that Stop reached the peer.

A model name with "think" in it makes a reasoning peer: it streams `PEER_THOUGHT` first, in the wire format's
own reasoning shape (`reasoning_content` deltas, or `reasoning` with "think-reasoning", or `<think>` tags in
the content with "think-tags"; reasoning summary deltas, or reasoning text deltas with "think-text"; thinking
blocks; Ollama's `thinking`). Asked with tools, the Responses peer thinks, calls `get_weather`, and after the
tool's result thinks again and answers (`TOOL_THOUGHT`, `RESULT_THOUGHT`, `WEATHER_ANSWER`), as an agent's
reasoning model does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, request

PEER_ANSWER = "東京は日本の首都です。Tokyo is the capital of Japan, home to about fourteen million people."
PEER_THOUGHT = "The user asks about Tokyo. I recall it is Japan's capital, with about fourteen million people."
TOOL_THOUGHT = "The user asks for the weather in Paris. I should call get_weather."
RESULT_THOUGHT = "The tool says it is sunny and 22 degrees. I can answer now."
WEATHER_ANSWER = "It is sunny and 22 degrees in Paris."
WEATHER_CALL = '{"city": "Paris"}'
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


def _responses_events(model: str = "peer", body: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "peer", "output": []}
    yield {"type": "response.created", "response": response}
    body = body or {}
    answered_tool = any(
        isinstance(i, dict) and i.get("type") == "function_call_output" for i in body.get("input") or []
    )
    thought, answer, index = PEER_THOUGHT, PEER_ANSWER, 0
    if body.get("tools") and not answered_tool:
        thought, answer = TOOL_THOUGHT, None
    elif answered_tool:
        thought, answer = RESULT_THOUGHT, WEATHER_ANSWER
    if "think" in model:
        yield from _responses_reasoning(thought, "text" if "think-text" in model else "summary")
        index = 1
    if answer is None:
        yield from _responses_call(index)
    else:
        yield from _responses_message(answer, index)
    yield {"type": "response.completed", "response": {**response, "status": "completed"}}


def _responses_message(answer: str, index: int) -> Iterator[dict[str, Any]]:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    yield {"type": "response.output_item.added", "output_index": index, "item": item}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_1", "output_index": index, "content_index": 0}
    yield {"type": "response.content_part.added", **where, "part": part}
    for piece in pieces(answer):
        yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **where, "text": answer, "logprobs": []}


def _responses_reasoning(thought: str, kind: str) -> Iterator[dict[str, Any]]:
    item: dict[str, Any] = {"id": "rs_1", "type": "reasoning", "summary": []}
    yield {"type": "response.output_item.added", "output_index": 0, "item": item}
    if kind == "summary":  # OpenAI's reasoning models: a summary of the thinking
        where = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
        yield {"type": "response.reasoning_summary_part.added", **where, "part": {"type": "summary_text", "text": ""}}
        for piece in pieces(thought):
            yield {"type": "response.reasoning_summary_text.delta", **where, "delta": piece}
        yield {"type": "response.reasoning_summary_text.done", **where, "text": thought}
        item = {**item, "summary": [{"type": "summary_text", "text": thought}]}
    else:  # gpt-oss on vLLM: the thinking itself
        where = {"item_id": "rs_1", "output_index": 0, "content_index": 0}
        for piece in pieces(thought):
            yield {"type": "response.reasoning_text.delta", **where, "delta": piece}
        yield {"type": "response.reasoning_text.done", **where, "text": thought}
    yield {"type": "response.output_item.done", "output_index": 0, "item": item}


def _responses_call(index: int) -> Iterator[dict[str, Any]]:
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "",
            "status": "in_progress"}  # fmt: skip
    yield {"type": "response.output_item.added", "output_index": index, "item": item}
    for piece in pieces(WEATHER_CALL):
        yield {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": index,
               "delta": piece}  # fmt: skip
    yield {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": index,
           "arguments": WEATHER_CALL}  # fmt: skip
    done = {**item, "arguments": WEATHER_CALL, "status": "completed"}
    yield {"type": "response.output_item.done", "output_index": index, "item": done}


def _chat_chunks(model: str) -> Iterator[dict[str, Any]]:
    """OpenAI chat-completion chunks; a reasoning peer's thinking as DeepSeek, vLLM or a raw template sends it."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [choice],
        }

    yield chunk({"role": "assistant", "content": ""})
    if "think-tags" in model:
        for piece in pieces(f"<think>\n{PEER_THOUGHT}\n</think>\n\n{PEER_ANSWER}"):
            yield chunk({"content": piece})
    else:
        key = "reasoning" if "think-reasoning" in model else "reasoning_content"
        for piece in pieces(PEER_THOUGHT) if "think" in model else []:
            yield chunk({"content": None, key: piece})
        for piece in pieces():
            yield chunk({"content": piece})
    yield chunk({}, "stop")


def _anthropic_events(model: str = "peer") -> Iterator[dict[str, Any]]:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "peer",
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1},
    }  # fmt: skip
    yield {"type": "message_start", "message": message}
    index = 0
    if "think" in model:  # extended thinking: a thinking block, its signature, then the text block
        block = {"type": "thinking", "thinking": "", "signature": ""}
        yield {"type": "content_block_start", "index": 0, "content_block": block}
        for piece in pieces(PEER_THOUGHT):
            yield {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}}
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}}
        yield {"type": "content_block_stop", "index": 0}
        index = 1
    yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    yield {"type": "ping"}
    for piece in pieces():
        yield {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
    yield {"type": "content_block_stop", "index": index}
    yield {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 20}}  # fmt: skip
    yield {"type": "message_stop"}


def _ollama_lines(key: str, model: str = "peer") -> Iterator[dict[str, Any]]:
    def line(text: str, done: bool, thinking: str | None = None) -> dict[str, Any]:
        body = {"message": {"role": "assistant", "content": text}} if key == "message" else {"response": text}
        if thinking is not None:  # `think=True`: the thinking comes first, with empty content
            (body["message"] if key == "message" else body)["thinking"] = thinking
        return {"model": "peer", "created_at": "2026-11-24T00:00:00Z", **body, "done": done}

    for piece in pieces(PEER_THOUGHT) if "think" in model else []:
        yield line("", False, piece)
    for piece in pieces():
        yield line(piece, False)
    yield {**line("", True), "done_reason": "stop"}


def peer_app(stats: PeerStats, piece_delay_s: float = PIECE_DELAY_S) -> Flask:
    """One Flask app answering every peer route with `PEER_ANSWER`, whatever was asked, an event per
    `piece_delay_s`."""
    app = Flask("sdk_peers")

    def streamed(events: Iterator[dict[str, Any]], render: Callable[[dict[str, Any]], str], mimetype: str) -> Response:
        def body() -> Iterator[str]:
            completed = False
            try:
                for event in events:
                    yield render(event)
                    time.sleep(piece_delay_s)
                completed = True
            finally:
                stats.record(completed=completed)

        return Response(body(), mimetype=mimetype)

    def model() -> str:
        return str((request.get_json(silent=True) or {}).get("model", "peer"))

    app.add_url_rule(
        "/v1/responses", "responses", lambda: streamed(_responses_events(model(), request.get_json()),
                                                       lambda e: _sse(e, named=True), "text/event-stream"),
        methods=["POST"],
    )  # fmt: skip
    app.add_url_rule(
        "/v1/chat/completions", "chat_completions", lambda: streamed(_chat_chunks(model()),
                                                                     lambda e: _sse(e, named=False),
                                                                     "text/event-stream"), methods=["POST"]
    )  # fmt: skip
    app.add_url_rule(
        "/v1/messages", "messages", lambda: streamed(_anthropic_events(model()), lambda e: _sse(e, named=True),
                                                     "text/event-stream"), methods=["POST"]
    )  # fmt: skip
    for route, key in (("/api/chat", "message"), ("/api/generate", "response")):
        app.add_url_rule(
            route, route, lambda key=key: streamed(_ollama_lines(key, model()), lambda e: json.dumps(e) + "\n",
                                                   "application/x-ndjson"), methods=["POST"]
        )  # fmt: skip
    return app
