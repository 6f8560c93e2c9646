"""`create_app`: a Flask app that streams a source into Deep Chat over Server-Sent Events."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from flask import Flask, Response, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException

from kit.errors import ChatError
from kit.pipeline.pump import CancelToken
from kit.pipeline.sanitize import neutralize_text
from kit.pipeline.sources import Message, Source, adapt_source, answer_text, texts, with_system_prompt
from kit.pipeline.sse import STREAM_HEADERS
from kit.pipeline.streaming import StreamSettings, public_message, sse_events, start_pump
from kit.pipeline.thinking import split_think_tags
from kit.web.chat_request import parse_chat_request
from kit.web.disconnect import client_gone_probe
from kit.web.observers import observers_for
from kit.web.origins import OriginPolicy
from kit.web.page import CONTENT_SECURITY_POLICY, render_page
from kit.web.probe import PROBE_HEADER, probe_plan, probe_script
from kit.web.stop_requests import STOP_ROUTE, STREAM_ID_HEADER, StopRequests

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# Adapter modules register the kinds of source they recognise (`register_source_adapter`). Each
# is imported only when the library it adapts is already loaded: a user's object can only come from a
# library the process has imported, and an app of plain functions then never pays for LangChain.
# Specific kinds register after the general Runnable adapter, so they are tried first.
ADAPTER_MODULES = {
    "langchain_core": "kit.adapters.runnables",
    "langgraph": "kit.adapters.graphs",
    "langchain_classic": "kit.adapters.classic",
}


def _load_adapters() -> None:
    for library, module in ADAPTER_MODULES.items():
        if library in sys.modules:
            importlib.import_module(module)


def create_app(
    source: Source,
    *,
    granularity: str = "chunk",
    coalesce_ms: float = StreamSettings.coalesce_ms,
    max_event_chars: int = StreamSettings.max_event_chars,
    heartbeat_s: float = StreamSettings.heartbeat_s,
    system_prompt: str | None = None,
    allowed_origins: Sequence[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    stall_timeout_s: float = StreamSettings.stall_timeout_s,
    neutralize_links: bool = StreamSettings.neutralize_links,
    thinking: str = StreamSettings.thinking,
    doctor_probe: bool = True,
    title: str = "Deep Chat streaming kit",
) -> Flask:
    """Build the app: `GET /` (the Deep Chat page), `POST /chat-stream` (SSE), `POST /chat-stream/stop` (Stop
    by stream id), `POST /chat` (one JSON reply), `GET /healthz`.

    >>> app = create_app(lambda messages: ["Hello", ", ", "world"], granularity="word")
    >>> app.test_client().post("/chat", json={"messages": [{"role": "user", "text": "Hi"}]}).json
    {'text': 'Hello, world'}
    """
    _load_adapters()
    start_source = adapt_source(source)  # a source that cannot be used fails now, not on the first chat
    settings = StreamSettings(
        granularity=granularity,
        coalesce_ms=coalesce_ms,
        max_event_chars=max_event_chars,
        heartbeat_s=heartbeat_s,
        stall_timeout_s=stall_timeout_s,
        neutralize_links=neutralize_links,
        thinking=thinking,
    )
    # The doctor's probe bypasses the source, so it is cut as sent: its timing is what gets measured.
    probe_settings = dataclasses.replace(settings, granularity="chunk")
    origins = OriginPolicy(allowed_origins)
    stop_requests = StopRequests()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["KIT_SETTINGS"] = settings
    app.config["KIT_TITLE"] = title  # kit.notebook.serve names a server after it

    def start(messages: list[Message], cancel: CancelToken) -> Iterable[Any]:
        return start_source(with_system_prompt(messages, system_prompt), cancel)

    @app.get("/")
    def page() -> Response:
        response = Response(render_page(title), mimetype="text/html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/chat-stream")
    def chat_stream() -> Response:
        messages = parse_chat_request(request)
        cancel = CancelToken()
        stop_requests.register(request.headers.get(STREAM_ID_HEADER), cancel)
        plan = probe_plan(request.headers.get(PROBE_HEADER)) if doctor_probe else None
        if plan is not None:  # `python -m kit doctor`: a bounded, known script instead of the model
            pump = start_pump(probe_script(plan, settings.heartbeat_s, cancel), cancel, probe_settings)
        else:
            # Called here, not in the stream, so that a failure to start still gets a proper HTTP status.
            pump = start_pump(start(messages, cancel), cancel, settings)
        events = sse_events(
            pump, settings, client_gone=client_gone_probe(request.environ), observers=observers_for(app, messages)
        )
        return Response(stream_with_context(events), headers=STREAM_HEADERS)

    @app.post(STOP_ROUTE)
    def stop_stream() -> Response:
        # The page's Stop, for proxies that keep reading after the browser left (see kit.web.stop_requests).
        return jsonify(stopped=stop_requests.stop(request.get_data(as_text=True).strip()))

    @app.post("/chat")
    def chat() -> Response:
        messages = parse_chat_request(request)
        cancel = CancelToken()
        try:
            text = answer_text(split_think_tags(texts(start(messages, cancel))))
        finally:
            cancel.cancel()
        return jsonify(text=neutralize_text(text) if neutralize_links else text)

    @app.before_request
    def check_origin() -> Response | None:
        return origins.check(request)

    @app.before_request
    def check_streamed_body_size() -> None:
        # A chunked request body has no Content-Length to check up front, and werkzeug silently cuts it
        # at the limit (the cut JSON would then be refused as malformed). Reading it whole, then one byte
        # more, raises the honest 413 instead.
        if request.method == "POST" and request.content_length is None:
            request.get_data(cache=True)
            request.stream.read(1)

    @app.after_request
    def add_headers(response: Response) -> Response:
        origins.add_cors_headers(request, response)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(ChatError)
    def chat_error(error: ChatError) -> tuple[Response, int]:
        return jsonify(error=error.message), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        messages = {
            404: "no such route: the chat routes are POST /chat-stream and POST /chat",
            405: f"method {request.method} is not allowed here",
            413: f"the request body is larger than the {max_body_bytes:,}-byte limit",
        }
        status = error.code or 500
        return jsonify(error=messages.get(status, error.description or error.name)), status

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> tuple[Response, int]:
        log.error("the source failed before streaming", exc_info=error)
        return jsonify(error=public_message(error)), 500

    return app
