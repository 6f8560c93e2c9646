"""OpenTelemetry traces of replies: the demo agent with a tool (a scripted tool-calling model) on a real server,
its spans caught by the SDK's in-memory exporter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kit import ScriptedToolModel, create_app
from kit.serving.client import chat_body, stream_chat
from kit.serving.demo import demo_agent_app
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id


def exporter_and_provider() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


def weather_call(text: str) -> tuple[str, dict[str, Any]]:
    return "get_weather", {"city": text}


def descendants(root: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans under `root`, depth first."""
    found, pending = [], [root.context.span_id]
    while pending:
        parent = pending.pop()
        for span in spans:
            if span.parent is not None and span.parent.span_id == parent:
                found.append(span)
                pending.append(span.context.span_id)
    return found


def everything_recorded(spans: list[ReadableSpan]) -> str:
    return json.dumps([dict(span.attributes or {}) for span in spans] + [span.name for span in spans])


def agent_server(serve, tmp_path: Path, **options: Any) -> tuple[InMemorySpanExporter, str]:
    exporter, provider = exporter_and_provider()
    app = demo_agent_app(
        tmp_path / "threads.sqlite", ScriptedToolModel(tool_call_for=weather_call), tracing=provider, **options
    )
    return exporter, serve(app).url


def test_one_span_per_reply_with_the_agents_runs_and_tool_under_it(serve, tmp_path: Path) -> None:
    exporter, url = agent_server(serve, tmp_path)
    for city in ("Paris", "Oslo"):
        reply = stream_chat(url + "chat-stream", city)
        assert reply.text_of("ai") == f"Done: It is sunny and 22 degrees in {city}."
    spans = list(exporter.get_finished_spans())
    roots = [span for span in spans if span.parent is None]
    assert [span.name for span in roots] == ["chat scripted-tool-model"] * 2
    for root in roots:
        children = descendants(root, spans)
        assert {span.context.trace_id for span in children} == {root.context.trace_id}
        names = [span.name for span in children]
        assert "LangGraph" in names and names.count("chat scripted-tool-model") == 2, names
        tool = next(span for span in children if span.name == "execute_tool get_weather")
        assert tool.attributes["gen_ai.tool.name"] == "get_weather"
        assert {"model", "tools"} <= {span.attributes.get("langgraph.node") for span in children}
        assert root.attributes["gen_ai.operation.name"] == "chat"
        assert root.attributes["kit.outcome"] == "finished"
        assert root.end_time >= max(span.end_time for span in children)
    assert len(spans) == sum(1 + len(descendants(root, spans)) for root in roots)  # nothing outside a reply
    recorded = everything_recorded(spans)
    for private in ("Paris", "Oslo", "sunny"):
        assert private not in recorded  # no prompt, answer, tool argument or result by default


def test_trace_content_records_prompts_answers_and_tool_calls(serve, tmp_path: Path) -> None:
    exporter, url = agent_server(serve, tmp_path, trace_content=True)
    stream_chat(url + "chat-stream", "Lima", client=None)
    recorded = everything_recorded(list(exporter.get_finished_spans()))
    assert "Lima" in recorded and "sunny" in recorded


def test_refused_and_failed_replies_end_their_span_with_an_error(serve) -> None:
    exporter, provider = exporter_and_provider()

    def source(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["text"] == "fail":
            yield "partial"
            raise RuntimeError("boom")
        yield from ["a", "b"]

    url = serve(create_app(source, tracing=provider, thread_store=False)).url
    assert (
        httpx.post(url + "chat-stream", content=b"[", headers={"Content-Type": "application/json"}).status_code == 400
    )
    assert stream_chat(url + "chat-stream", "fail").errors
    assert (
        httpx.post(url + "chat", json=chat_body("hi"), headers={THREAD_ID_HEADER: new_thread_id()}).status_code == 200
    )
    spans = {span.attributes["kit.outcome"]: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"refused_4xx", "failed", "finished"}
    assert spans["refused_4xx"].status.status_code == StatusCode.ERROR
    assert spans["failed"].status.status_code == StatusCode.ERROR
    assert spans["finished"].status.status_code == StatusCode.UNSET
    assert spans["finished"].name == "chat unknown" and spans["finished"].attributes["http.route"] == "/chat"


@pytest.mark.timeout(60)
def test_the_otel_environment_turns_traces_on() -> None:
    code = (
        "from kit import create_app\n"
        "app = create_app(lambda m: ['hi'], thread_store=False)\n"
        "body = {'messages': [{'role': 'user', 'text': 'x'}]}\n"
        "assert app.test_client().post('/chat-stream', json=body).status_code == 200\n"
        "from opentelemetry import trace\n"
        "trace.get_tracer_provider().force_flush()\n"
    )
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "kit-test", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    span = json.loads(done.stdout)
    assert span["name"] == "chat unknown" and span["resource"]["attributes"]["service.name"] == "kit-test"
