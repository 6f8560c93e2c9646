"""Token usage per reply and `GET /metrics`, on a real server on loopback with scripted sources (the model under
gunicorn is in tests/test_metrics_prod.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from langchain_core.messages import AIMessageChunk
from prometheus_client.parser import text_string_to_metric_families

from kit import CancelToken, ScriptedSource, ServiceBusy, create_app, create_blueprint
from kit.pipeline.usage import Usage
from kit.serving.client import chat_body, iter_stream, stream_chat
from kit.web.blueprint import STREAM_ID_HEADER
from tests.helpers import bubbles


def openai_chunks(text: str, inputs: int = 7) -> list[dict[str, Any]]:
    """An OpenAI chat stream with `stream_options={"include_usage": True}`: deltas, then a usage chunk."""
    words = text.split(" ")
    deltas = [
        {"choices": [{"delta": {"content": w if i == 0 else " " + w}}], "model": "gpt-4o-mini"}
        for i, w in enumerate(words)
    ]
    usage = {"prompt_tokens": inputs, "completion_tokens": len(words), "total_tokens": inputs + len(words)}
    return [*deltas, {"choices": [], "model": "gpt-4o-mini", "usage": usage}]


def test_usage_is_read_from_each_sdk_shape() -> None:
    anthropic = [
        {"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 11, "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
    ]
    responses = [
        {"type": "response.output_text.delta", "delta": "Hi"},
        {
            "type": "response.completed",
            "response": {"model": "gpt-5", "usage": {"input_tokens": 4, "output_tokens": 2}},
        },
    ]
    ollama = [
        {"model": "llama3", "message": {"content": "Hi"}, "done": False},
        {"model": "llama3", "message": {"content": ""}, "done": True, "prompt_eval_count": 3, "eval_count": 5},
    ]
    langchain = [
        AIMessageChunk("Hi", usage_metadata={"input_tokens": 6, "output_tokens": 1, "total_tokens": 7}),
        AIMessageChunk(" there", usage_metadata={"input_tokens": 0, "output_tokens": 2, "total_tokens": 2}),
    ]
    expected = [(11, 9, "claude-x"), (4, 2, "gpt-5"), (3, 5, "llama3"), (6, 3, None), (7, 2, "gpt-4o-mini")]
    for items, (inputs, outputs, model) in zip(
        [anthropic, responses, ollama, langchain, openai_chunks("a b")], expected, strict=True
    ):
        usage = Usage()
        for item in items:
            usage.read(item)
        assert (usage.input_tokens, usage.output_tokens, usage.model) == (inputs, outputs, model)
    plain = Usage()
    plain.read("text")
    assert not plain.reported


def test_the_usage_is_the_replys_last_event_and_never_follows_an_error(serve) -> None:
    server = serve(create_app(lambda messages: openai_chunks("one two three"), coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "hi")
    assert reply.text == "one two three"
    assert reply.events[-1] == {"usage": {"input_tokens": 7, "output_tokens": 3, "model": "gpt-4o-mini"}}

    def failing(messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield from openai_chunks("one two")
        raise RuntimeError("boom")

    failed = stream_chat(serve(create_app(failing)).url + "chat-stream", "hi")
    assert failed.errors and "usage" not in str(failed.events)
    plain = stream_chat(serve(create_app(lambda messages: ["no", " usage"])).url + "chat-stream", "hi")
    assert all("usage" not in event for event in plain.events)


def _scrape(url: str, route: str) -> dict[str, float]:
    """The samples of one route, keyed by name and outcome or token type."""
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.labels.get("route") != route:
                continue
            extra = sample.labels.get("outcome") or sample.labels.get("gen_ai_token_type")
            key = sample.name + (f"[{extra}]" if extra else "")
            figures[key] = figures.get(key, 0.0) + sample.value
    return figures


class _Scripted:
    """A source whose reply the user's text picks: fail, busy, slow (to be stopped) or a short one with usage."""

    def __init__(self) -> None:
        self.slow_started = threading.Event()

    def __call__(self, messages: list[dict[str, Any]], cancel: CancelToken) -> Any:
        text = messages[-1]["text"]
        if text == "busy":
            raise ServiceBusy("busy, try again")
        if text == "fail":
            return ScriptedSource(["partial", " text"], fail_after=1)(messages, cancel)
        if text == "slow":
            return self._slow(cancel)
        return openai_chunks("a short reply")

    def _slow(self, cancel: CancelToken) -> Iterator[str]:
        yield "first"
        self.slow_started.set()
        while not cancel.wait(0.05):
            yield "."


def test_metrics_count_each_outcome_of_one_chat_only(serve) -> None:
    app = Flask("two_chats")
    source = _Scripted()
    app.register_blueprint(create_blueprint(source, metrics=True, coalesce_ms=0), url_prefix="/observed")
    app.register_blueprint(create_blueprint(lambda m: ["other"], metrics=False), url_prefix="/other")
    server = serve(app)
    base = server.url + "observed/"
    for text in ("short", "short", "fail", "busy"):
        stream_chat(base + "chat-stream", text)
    stream_chat(server.url + "other/chat-stream", "not counted")
    assert (
        httpx.post(base + "chat-stream", content=b"[", headers={"Content-Type": "application/json"}).status_code == 400
    )
    usage = {"input_tokens": 7, "output_tokens": 3, "model": "gpt-4o-mini"}
    assert httpx.post(base + "chat", json=chat_body("short")).json() == {
        "text": "a short reply",
        "custom": {"usage": usage},
    }
    stream_id = "f" * 32
    items = iter_stream(base + "chat-stream", chat_body("slow"), headers={STREAM_ID_HEADER: stream_id})
    next(items)
    assert source.slow_started.wait(10)
    during = _scrape(base + "metrics", "/observed/chat-stream")
    assert during["kit_active_streams"] == 1
    assert httpx.post(base + "chat-stream/stop", content=stream_id).json() == {"stopped": True}
    list(items)
    figures = _scrape(base + "metrics", "/observed/chat-stream")
    outcomes = {key: value for key, value in figures.items() if key.startswith("kit_replies_total")}
    assert outcomes == {
        "kit_replies_total[finished]": 2,
        "kit_replies_total[failed]": 1,
        "kit_replies_total[refused_503]": 1,
        "kit_replies_total[refused_4xx]": 1,
        "kit_replies_total[stopped]": 1,
    }
    assert figures["gen_ai_server_time_to_first_token_seconds_count"] == 4  # 2 finished, the failed, the stopped
    assert figures["gen_ai_client_token_usage_sum[output]"] == 6
    assert figures["gen_ai_client_token_usage_sum[input]"] == 14
    assert figures["gen_ai_server_time_per_output_token_seconds_count"] == 2
    assert figures["kit_active_streams"] == 0
    answered = _scrape(base + "metrics", "/observed/chat")
    assert answered["kit_replies_total[finished]"] == 1
    assert (answered["gen_ai_client_token_usage_sum[input]"], answered["gen_ai_client_token_usage_sum[output]"]) == (
        7,
        3,
    )
    assert _scrape(base + "metrics", "/other/chat-stream") == {}
    assert httpx.get(server.url + "other/metrics").status_code == 404


@pytest.mark.timeout(60)
def test_metrics_off_import_nothing_and_serve_no_route() -> None:
    code = (
        "import sys\n"
        "from kit import create_app\n"
        "app = create_app(lambda m: ['hi'], thread_store=False)\n"
        "client = app.test_client()\n"
        "assert client.post('/chat-stream', json={'messages': [{'role': 'user', 'text': 'x'}]}).status_code == 200\n"
        "assert client.get('/metrics').status_code == 404\n"
        "assert 'prometheus_client' not in sys.modules and 'opentelemetry' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_threads_transcript_keeps_the_replys_usage(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from kit.threads.ids import THREAD_ID_HEADER, new_thread_id

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # a store made before the `custom` column existed
        db.execute(
            "CREATE TABLE kit_thread_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, thread_id TEXT NOT NULL, "
            "role TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL)"
        )
    server = serve(create_app(lambda messages: openai_chunks("kept with its usage"), thread_store=str(path)))
    thread = new_thread_id()
    items = iter_stream(server.url + "chat-stream", chat_body("hi"), headers={THREAD_ID_HEADER: thread})
    assert list(items)[-1].payload == {"usage": {"input_tokens": 7, "output_tokens": 4, "model": "gpt-4o-mini"}}
    messages = bubbles(httpx.get(f"{server.url}threads/{thread}/messages").json())
    assert messages == [
        {"role": "user", "text": "hi"},
        {
            "role": "ai",
            "text": "kept with its usage",
            "custom": {"usage": {"input_tokens": 7, "output_tokens": 4, "model": "gpt-4o-mini"}},
        },
    ]


def test_the_json_reply_carries_its_usage_and_the_transcript_keeps_it(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kit.threads.ids import THREAD_ID_HEADER, new_thread_id

    server = serve(create_app(lambda messages: openai_chunks("one two three"), thread_store=tmp_path / "t.sqlite"))
    thread = new_thread_id()
    reply = httpx.post(server.url + "chat", json=chat_body("hi"), headers={THREAD_ID_HEADER: thread})
    usage = {"input_tokens": 7, "output_tokens": 3, "model": "gpt-4o-mini"}
    assert reply.status_code == 200 and reply.json() == {"text": "one two three", "custom": {"usage": usage}}
    assert bubbles(httpx.get(f"{server.url}threads/{thread}/messages").json()) == [
        {"role": "user", "text": "hi"},
        {"role": "ai", "text": "one two three", "custom": {"usage": usage}},
    ]
    plain = serve(create_app(lambda messages: ["no", " usage"], thread_store=False))
    assert httpx.post(plain.url + "chat", json=chat_body("hi")).json() == {"text": "no usage"}


def test_a_chains_usage_metadata_reaches_the_reply_and_the_embedded_chat_model_reports_it(serve) -> None:  # type: ignore[no-untyped-def]
    from langchain_core.runnables import RunnableGenerator

    from kit import ChatLlama

    def chunks(_: Iterator[Any]) -> Iterator[AIMessageChunk]:
        yield AIMessageChunk("Hi", usage_metadata={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6})
        yield AIMessageChunk(" there", usage_metadata={"input_tokens": 0, "output_tokens": 2, "total_tokens": 2})

    reply = stream_chat(serve(create_app(RunnableGenerator(chunks), thread_store=False)).url + "chat-stream", "hi")
    assert reply.text == "Hi there"
    assert reply.events[-1] == {"usage": {"input_tokens": 5, "output_tokens": 3}}
    message = ChatLlama(max_tokens=6, temperature=0, seed=1, n_ctx=512, slots=1, host_cache_mb=0).invoke("Hi")
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] >= 1 and message.usage_metadata["input_tokens"] > 5
