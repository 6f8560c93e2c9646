"""Prometheus metrics of a chat (`metrics=True`): `GET /metrics`, named after OpenTelemetry's GenAI conventions.

Per reply: time to first token, time per output token, duration, token usage (where the source reports it),
replies by outcome; now: active streams and, for the embedded model, queue depth, busy slots and prefix reuse.
Labels stay bounded: route, model, outcome, token type; never a user or a thread. Under gunicorn
(kit.serving.production sets PROMETHEUS_MULTIPROC_DIR) one scrape of any worker gives every worker's counts.
This module is imported only when metrics are on; prometheus_client only then.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, g, request

from kit.pipeline.observe import EndReason, EngineState, StreamObserver, WriteKind, watch_engines
from kit.pipeline.usage import Usage

# The GenAI conventions' advised bucket boundaries (semantic-conventions, gen-ai-metrics).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
OUTCOMES = {"finished": "finished", "client_gone": "stopped", "failed": "failed"}
UNKNOWN_MODEL = "unknown"
_STARTED = "kit_metrics_started"
# The embedded engine's metrics (name: help, EngineState field), in the web workers' /metrics when the model runs
# in their process, in the engine process's own /metrics when it runs there (EngineCollector).
ENGINE_GAUGES = {
    "kit_engine_queue_depth": ("Generations waiting for a slot", "waiting"),
    "kit_engine_busy_slots": ("Slots generating now", "running"),
    "kit_engine_slots": ("Slots of the loaded engines", "slots"),
}
PROMPT_TOKENS = ("kit_engine_prompt_tokens", "Prompt tokens, by origin: reused (cached) or read")
GENERATED_TOKENS = ("kit_engine_generated_tokens", "Tokens the engine generated")


class Metrics:
    """The process's metric objects (one set per process: prometheus_client refuses a name twice)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import Counter, Gauge, Histogram
        except ImportError as error:
            raise ImportError(
                "metrics=True needs prometheus_client: pip install 'kit[prod]' (or prometheus-client)"
            ) from error

        reply, engine = ("route", "model"), ("model",)
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Request received to the reply's first text sent, per streamed reply that sent text",
            reply,
            buckets=TTFT_BUCKETS,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, per finished streamed reply",
            reply,
            buckets=TPOT_BUCKETS,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Request received to the reply's end, by outcome",
            (*reply, "outcome"),
            buckets=DURATION_BUCKETS,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per reply as its source reported them, by type (input, output)",
            (*reply, "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
        )
        self.replies = Counter(
            "kit_replies",
            "Replies by outcome (finished, stopped, failed, refused_4xx, refused_503)",
            ("route", "outcome"),
        )
        self.active = Gauge("kit_active_streams", "Streams being served now", ("route",), multiprocess_mode="livesum")
        self.engine_gauges = {  # by the EngineState field each shows
            field: Gauge(name, text, engine, multiprocess_mode="livesum")
            for name, (text, field) in ENGINE_GAUGES.items()
        }
        self.prompt = Counter(*PROMPT_TOKENS, (*engine, "origin"))
        self.generated = Counter(*GENERATED_TOKENS, engine)
        self._engines: dict[int, EngineState] = {}
        self._lock = threading.Lock()
        watch_engines(self.engine_changed)

    def observe_tokens(self, route: str, model: str, inputs: Any, outputs: Any) -> None:
        """One reply's token usage, by type, for the counts its source reported (ints; others are skipped)."""
        for kind, count in (("input", inputs), ("output", outputs)):
            if isinstance(count, int):
                self.tokens.labels(route, model, kind).observe(count)

    def engine_changed(self, engine: int, state: EngineState) -> None:
        """Counters grow by what changed since the engine's last state; gauges sum this process's engines."""
        with self._lock:
            before = self._engines.get(engine)
            self._engines[engine] = state
            model = state.model
            if before is not None or state.prompt_tokens or state.generated_tokens:
                last = before or EngineState(model, 0, 0, 0, 0, 0, 0)
                reused = state.reused_tokens - last.reused_tokens
                read = state.read_tokens - last.read_tokens
                generated = state.generated_tokens - last.generated_tokens
                for counter, value in (
                    (self.prompt.labels(model, "reused"), reused),
                    (self.prompt.labels(model, "read"), read),
                    (self.generated.labels(model), generated),
                ):
                    if value > 0:
                        counter.inc(value)
            same = [s for s in self._engines.values() if s.model == model]
            for field, gauge in self.engine_gauges.items():
                gauge.labels(model).set(sum(getattr(s, field) for s in same))


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def process_metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


class ReplyMetrics(StreamObserver):
    """One streamed reply's figures, observed when it ends."""

    def __init__(self, metrics: Metrics, route: str, model: str, started: float) -> None:
        self.metrics, self.route, self.model, self.started = metrics, route, model, started
        self.first_text: float | None = None
        self.pieces = 0
        self.reported: Usage | None = None
        metrics.active.labels(route).inc()

    def piece(self, chars: int, at: float) -> None:
        self.pieces += 1

    def write(self, kind: WriteKind, nbytes: int, at: float) -> None:
        if kind == "text" and self.first_text is None:
            self.first_text = at

    def usage(self, usage: Usage, at: float) -> None:
        self.reported = usage

    def end(self, reason: EndReason, at: float) -> None:
        metrics, usage = self.metrics, self.reported or Usage()
        model = usage.model or self.model
        outcome = OUTCOMES[reason]
        metrics.active.labels(self.route).dec()
        metrics.replies.labels(self.route, outcome).inc()
        metrics.duration.labels(self.route, model, outcome).observe(at - self.started)
        metrics.observe_tokens(self.route, model, usage.input_tokens, usage.output_tokens)
        if self.first_text is None:
            return
        metrics.ttft.labels(self.route, model).observe(self.first_text - self.started)
        tokens = usage.output_tokens if usage.output_tokens is not None else self.pieces
        if reason == "finished" and tokens > 1:
            metrics.tpot.labels(self.route, model).observe((at - self.first_text) / (tokens - 1))


def refusal_outcome(status: int) -> str | None:
    """The outcome of a chat request answered with `status` before any stream (None: not a refusal).

    >>> refusal_outcome(413), refusal_outcome(503), refusal_outcome(500), refusal_outcome(200)
    ('refused_4xx', 'refused_503', 'failed', None)
    """
    if status == 503:
        return "refused_503"
    if 400 <= status < 500:
        return "refused_4xx"
    return "failed" if status >= 500 else None


def model_name(source: Any) -> str:
    """The model a source runs, for the `model` label until its stream names one: the embedded model's file,
    a LangChain chat model's `model_name` or `model`; otherwise "unknown"."""
    settings = getattr(source, "settings", None)
    resolved = getattr(settings, "resolved_path", None)
    if callable(resolved):
        return str(resolved().stem)
    for attribute in ("model_name", "model"):
        value = getattr(source, attribute, None)
        if isinstance(value, str) and value:
            return value
    return UNKNOWN_MODEL


def metrics_response() -> Response:
    """`GET /metrics`: every worker's figures under gunicorn (multiprocess mode), this process's otherwise."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class EngineCollector:
    """A Prometheus collector of one engine's state, read at each scrape (the engine process's `GET /metrics`):
    the same names and labels as the web workers' engine metrics."""

    def __init__(self, state: Callable[[], EngineState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.state()
        for name, (help, field) in ENGINE_GAUGES.items():
            gauge = GaugeMetricFamily(name, help, labels=["model"])
            gauge.add_metric([state.model], getattr(state, field))
            yield gauge
        prompt = CounterMetricFamily(*PROMPT_TOKENS, labels=["model", "origin"])
        prompt.add_metric([state.model, "reused"], state.reused_tokens)
        prompt.add_metric([state.model, "read"], state.read_tokens)
        yield prompt
        generated = CounterMetricFamily(*GENERATED_TOKENS, labels=["model"])
        generated.add_metric([state.model], state.generated_tokens)
        yield generated


def engine_metrics_text(state: Callable[[], EngineState]) -> tuple[bytes, str]:
    """The engine process's `/metrics` body and content type (prometheus_client's text format)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(EngineCollector(state))  # type: ignore[arg-type]  # a collector is anything with collect()
    return generate_latest(registry), CONTENT_TYPE_LATEST


class ChatMetrics:
    """The metrics of one mounted chat: its `/metrics` route, its refusals and the observer of its streams."""

    def __init__(self, blueprint: Blueprint, source: Any) -> None:
        self.metrics = process_metrics()
        self.model = model_name(source)
        blueprint.add_url_rule("/metrics", "metrics", metrics_response, methods=["GET"])
        blueprint.before_request(self._stamp)
        blueprint.after_request(self._refusals)

    def _stamp(self) -> None:
        g.setdefault(_STARTED, {})[id(self)] = time.perf_counter()

    def _refusals(self, response: Response) -> Response:
        started = g.get(_STARTED, {}).get(id(self))
        if started is None or request.method != "POST" or request.endpoint is None:
            return response
        outcome = refusal_outcome(response.status_code)
        if outcome is None and not response.is_streamed:
            outcome = "finished"  # POST /chat: the whole answer in one response
        if outcome is not None and not request.endpoint.endswith(".stop_stream"):
            route = request.url_rule.rule if request.url_rule is not None else request.path
            self.metrics.replies.labels(route, outcome).inc()
            self.metrics.duration.labels(route, self.model, outcome).observe(time.perf_counter() - started)
            if outcome == "finished":
                self._answer_tokens(route, response)
        return response

    def _answer_tokens(self, route: str, response: Response) -> None:
        # POST /chat's body carries the usage the source reported (`custom.usage`), as the page gets it.
        body = response.get_json(silent=True) if response.is_json else None
        usage = ((body or {}).get("custom") or {}).get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        model = usage.get("model") or self.model
        self.metrics.observe_tokens(route, model, usage.get("input_tokens"), usage.get("output_tokens"))

    def observer(self, messages: list[dict[str, object]]) -> StreamObserver:
        """The observer of a stream of this chat (a stream of another chat of the app gets none of its own)."""
        started = g.get(_STARTED, {}).get(id(self))
        if started is None:
            return StreamObserver()
        route = request.url_rule.rule if request.url_rule is not None else request.path
        return ReplyMetrics(self.metrics, route, self.model, started)
