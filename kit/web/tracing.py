"""OpenTelemetry traces of a chat's replies: one span per reply named `chat {model}` (the GenAI conventions'
`{operation} {model}`), with the source's steps as child spans (a chain's runs, a graph's nodes, tool calls:
kit.adapters.tracing).

On when `opentelemetry-sdk` is set up in the process (a TracerProvider set, as `opentelemetry-instrument`
does), or when the standard environment names an exporter (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT);
`tracing=False` turns it off, a TracerProvider passed as `tracing=` gets the spans. Prompts and answers are
recorded only with `trace_content=True`. When it is off, nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g, request

from kit.pipeline.observe import EndReason, StreamObserver
from kit.pipeline.usage import Usage
from kit.web.metrics import OUTCOMES, UNKNOWN_MODEL, model_name, refusal_outcome

log = logging.getLogger(__name__)
OTEL_ENV = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_STATE = "kit_trace"


def tracer_provider(setting: Any) -> Any | None:
    """The TracerProvider a chat's spans go to, or None when traces are off (see the module's docstring)."""
    if setting is False:
        return None
    if setting is not None and setting is not True:
        return setting  # a TracerProvider of the app's own
    from_env = any(os.environ.get(name) for name in OTEL_ENV)
    if setting is None and not from_env and "opentelemetry.sdk.trace" not in sys.modules:
        return None  # nothing set up: nothing imported
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        if setting is True or from_env:
            log.warning("traces are off: install opentelemetry-sdk (pip install opentelemetry-sdk)")
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        return provider
    if from_env:
        made = _provider_from_env()
        if made is not None:
            trace.set_tracer_provider(made)
        return made
    return provider if setting is True else None


def _provider_from_env() -> Any | None:
    """A TracerProvider as the OTEL_* environment describes it: exporter, endpoint, service name, resource."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("traces are off: install opentelemetry-exporter-otlp-proto-http for OTEL_TRACES_EXPORTER=otlp")
            return None
        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT and _HEADERS itself
    else:
        if name != "none":
            log.warning("traces are off: the kit knows the exporters otlp and console, not %r", name)
        return None
    provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass
class _Reply:
    """One request's span, and what made it current while the view ran."""

    span: Any
    context: Any = None
    runs: Any = None
    streaming: bool = False


class ReplySpan(StreamObserver):
    """Ends a streamed reply's span with its outcome and the token usage its source reported."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def usage(self, usage: Usage, at: float) -> None:
        _set_usage(self.span, usage)

    def end(self, reason: EndReason, at: float) -> None:
        _finish(self.span, OUTCOMES[reason])


def _set_usage(span: Any, usage: Usage) -> None:
    values = {"gen_ai.usage.input_tokens": usage.input_tokens, "gen_ai.usage.output_tokens": usage.output_tokens,
              "gen_ai.response.model": usage.model}  # fmt: skip
    span.set_attributes({key: value for key, value in values.items() if value is not None})
    if usage.model and getattr(span, "name", None) == f"chat {UNKNOWN_MODEL}":
        span.update_name(f"chat {usage.model}")


def _finish(span: Any, outcome: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("kit.outcome", outcome)
    if outcome == "failed" or outcome.startswith("refused"):
        span.set_attribute("error.type", outcome)
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


class ChatTracing:
    """The spans of one mounted chat: opened before each chat request's view, ended when its reply ends."""

    def __init__(self, blueprint: Blueprint, source: Any, provider: Any, capture_content: bool) -> None:
        self.tracer = provider.get_tracer("kit")
        self.model = model_name(source)
        self.capture_content = capture_content
        blueprint.before_request(self._open)
        blueprint.after_request(self._hand_over)
        blueprint.teardown_request(self._close)

    def _open(self) -> None:
        if request.method != "POST" or (request.endpoint or "").endswith(".stop_stream"):
            return
        from opentelemetry import context, trace

        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": self.model}
        if request.url_rule is not None:
            attributes["http.route"] = request.url_rule.rule
        if self.capture_content:
            body = request.get_json(silent=True)
            attributes["gen_ai.input.messages"] = json.dumps((body or {}).get("messages"), ensure_ascii=False)
        span = self.tracer.start_span(f"chat {self.model}", attributes=attributes)
        reply = _Reply(span, context.attach(trace.set_span_in_context(span)))
        if "langchain_core" in sys.modules:  # a chain's runs become child spans (the pump's thread copies this)
            from kit.adapters.tracing import RunSpans, trace_runs

            named = self.model != UNKNOWN_MODEL
            runs = RunSpans(self.tracer, span, capture_content=self.capture_content, named=named)
            reply.runs = trace_runs(runs)
        g.setdefault(_STATE, {})[id(self)] = reply

    def _hand_over(self, response: Response) -> Response:
        reply = g.get(_STATE, {}).get(id(self))
        if reply is None:
            return response
        self._detach(reply)
        if response.status_code == 200 and response.is_streamed:
            reply.streaming = True  # its observer ends the span with the stream
        else:
            _finish(reply.span, refusal_outcome(response.status_code) or "finished")
        del g.get(_STATE)[id(self)]
        return response

    def _detach(self, reply: _Reply) -> None:
        from opentelemetry import context

        if reply.runs is not None:
            from kit.adapters.tracing import stop_tracing_runs

            stop_tracing_runs(reply.runs)
            reply.runs = None
        if reply.context is not None:
            context.detach(reply.context)
            reply.context = None

    def _close(self, error: BaseException | None) -> None:
        reply = g.get(_STATE, {}).pop(id(self), None)  # the view failed before after_request
        if reply is not None:
            self._detach(reply)
            _finish(reply.span, "failed")

    def observer(self, messages: list[dict[str, object]]) -> StreamObserver:
        """The observer of a stream of this chat, which ends its span."""
        reply = g.get(_STATE, {}).get(id(self))
        return ReplySpan(reply.span) if reply is not None else StreamObserver()
