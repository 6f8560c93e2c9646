"""`create_blueprint`: the chat as a Flask Blueprint, to mount under any prefix of any Flask app."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from kit.adapters import adapt
from kit.errors import ChatError
from kit.pipeline.cancel import OPEN_STREAMS, CancelToken
from kit.pipeline.coalesce import coalescing_window
from kit.pipeline.pump import Pump
from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Message, Source, SourceFn, with_system_prompt
from kit.pipeline.streaming import collect_answer, public_message, start_pump
from kit.threads.transcript import with_usage
from kit.web.branches import ChatBranches
from kit.web.chat_request import parse_chat_body
from kit.web.edge import STREAM_ID_HEADER, stream_reply
from kit.web.feedback import ChatFeedback
from kit.web.interrupts import ChatInterrupts  # approvals (issue 18)
from kit.web.observers import instrument
from kit.web.origins import OriginPolicy
from kit.web.page import CONTENT_SECURITY_POLICY, render_page
from kit.web.probe import PROBE_HEADER, probe_allowed, probe_plan, probe_script
from kit.web.rejoin import RunStreams
from kit.web.runs import Slot, ThreadRuns, after_claim
from kit.web.threads import ChatThreads  # threads (issue 17)

log = logging.getLogger(__name__)

STOP_ROUTE = "/chat-stream/stop"

_names = itertools.count(1)


class ChatRoutes:
    """The source and settings behind one mounted chat, and what its routes do with a request."""

    def __init__(self, source: SourceFn, settings: StreamSettings) -> None:
        self.source = source
        self.settings = settings
        # The doctor's probe bypasses the source, so it is cut as sent: its timing is what gets measured.
        self.probe_settings = settings.with_options(granularity="chunk")
        self.threads = ChatThreads(source, store=settings.thread_store, owner=settings.thread_owner)  # issue 17
        self.runs = ThreadRuns(self.threads, settings)  # one reply at a time per thread (issue 26)
        self.streams = RunStreams(self.threads, settings, self.runs.runlog)  # runs that survive the network
        self.branches = ChatBranches(self.threads, self.runs)  # regenerate, edit, switch (issue 27)

    def start(self, messages: list[Message], cancel: CancelToken, slot: Slot | None = None) -> Pump:
        # Called in the view, not in the stream, so that a failure to start still gets a proper HTTP status
        # (a queued send's source starts in the pump's thread, once its thread is free).
        prompt = with_system_prompt(messages, self.settings.system_prompt)
        with coalescing_window(self.settings.coalesce_ms / 1000):  # the pump's thread runs in a copy of this context
            if slot is not None and slot.queued:
                return start_pump(after_claim(slot, lambda: self.source(prompt, cancel)), cancel, self.settings)
            items: Iterable[Any] = self.source(prompt, cancel)
            return start_pump(items, cancel, self.settings)

    def stream(self) -> Response:
        """`POST chat-stream`: the reply as Server-Sent Events."""
        messages, branch = parse_chat_body(request, self.settings.file_limits)
        turn = self.threads.turn(request, messages)  # threads (issue 17): 400/404/503 before the first byte
        branched = self.branches.plan(turn, branch, messages)  # issue 27: checked before any source starts
        messages = branched.messages if branched is not None else messages
        move = branched.move if branched is not None else None
        cancel = CancelToken()
        self.threads.watch_stop(request.headers.get(STREAM_ID_HEADER), cancel)  # threads: Stop from other workers
        plan = probe_plan(request.headers.get(PROBE_HEADER))
        if plan is not None and probe_allowed(self.settings.doctor_probe, request.environ):
            # `python -m kit doctor`: a bounded, known script instead of the model.
            script = probe_script(plan, self.settings.heartbeat_s, cancel)
            return stream_reply(start_pump(script, cancel, self.probe_settings), self.settings, messages, turn.record)
        # 409 on a busy thread (issue 26); the claim's commit starts the run in the log; a queued send waits
        # for its claim inside the stream, where heartbeats flow.
        with self.runs.starting(turn.thread_id, cancel, turn.asked, queue=True, then=move) as slot, turn.scope():
            pump = self.start(messages, cancel, slot)
        # The transcript is written when the reply ends, then the thread is free for the next one.
        return self.streams.respond(slot, pump, messages, turn.asked, turn.record)

    def answer(self) -> Response:
        """`POST chat`: the same pipeline as the stream, the whole answer as one JSON object (`{"text"}`, with
        `"custom": {"usage": ...}` when the source reported its token usage, as the transcript keeps it)."""
        messages, branch = parse_chat_body(request, self.settings.file_limits)
        turn = self.threads.turn(request, messages)  # threads (issue 17)
        branched = self.branches.plan(turn, branch, messages)  # issue 27
        messages = branched.messages if branched is not None else messages
        cancel = CancelToken()
        with self.runs.starting(turn.thread_id, cancel, then=branched.move if branched else None) as slot:  # issue 26
            with turn.scope():
                pump = self.start(messages, cancel)
            text = collect_answer(pump)
            reply = with_usage({"text": text}, pump.usage.as_dict())
            turn.record_answer(reply)  # threads (issue 17)
        slot.release(pump)
        return jsonify(reply)

    def stop_stream(self) -> Response:
        """`POST chat-stream/stop`: the page's Stop, for proxies that keep reading after the browser left
        (jupyter-server-proxy does); a stream on another worker process is reached through the thread store."""
        stream_id = request.get_data(as_text=True).strip()
        stopped = OPEN_STREAMS.stop(stream_id)
        if not stopped:
            self.threads.post_stop(stream_id)  # threads (issue 17)
        return jsonify(stopped=stopped)

    def page(self) -> Response:
        response = Response(render_page(self.settings.title, files=self.settings.file_limits), mimetype="text/html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


def create_blueprint(
    source: Source, settings: StreamSettings | None = None, *, name: str | None = None, **options: Any
) -> Blueprint:
    """The chat as a Blueprint: `GET /` (the Deep Chat page), `POST /chat-stream` (SSE), `POST
    /chat-stream/stop` (Stop by stream id), `POST /chat` (one JSON reply), `GET /healthz` (and `GET /metrics`
    with `metrics=True`), relative to wherever it is registered. `options` are `StreamSettings` fields
    (granularity="word", ...); several chats need several blueprints (each gets a name of its own unless
    `name` is given).

    >>> from flask import Flask
    >>> app = Flask("mine")
    >>> app.register_blueprint(create_blueprint(lambda messages: ["Hi", " there"]), url_prefix="/chat")
    >>> app.test_client().post("/chat/chat", json={"messages": [{"role": "user", "text": "Hi"}]}).json
    {'text': 'Hi there'}
    """
    settings = (settings or StreamSettings()).with_options(**options)
    routes = ChatRoutes(adapt(source), settings)  # a source that cannot be used fails now, not on the first chat
    blueprint = Blueprint(
        name or f"kit_chat_{next(_names)}", __name__, static_folder="static", static_url_path="/static"
    )
    blueprint.add_url_rule("/", "page", routes.page, methods=["GET"])
    blueprint.add_url_rule("/healthz", "healthz", lambda: jsonify(status="ok"), methods=["GET"])
    blueprint.add_url_rule("/chat-stream", "chat_stream", routes.stream, methods=["POST"])
    blueprint.add_url_rule(STOP_ROUTE, "stop_stream", routes.stop_stream, methods=["POST"])
    blueprint.add_url_rule("/chat", "chat", routes.answer, methods=["POST"])
    routes.threads.register_routes(blueprint)  # threads (issue 17): GET /threads/<id>/messages
    routes.streams.register_routes(blueprint)  # issue 26: POST chat-stream/rejoin, GET threads/<id>/run
    routes.branches.register_routes(blueprint)  # issue 27: POST threads/<id>/switch
    ChatFeedback(routes.threads).register_routes(blueprint)  # issue 27: PUT, DELETE .../feedback
    # approvals (issue 18): GET interrupts and POST resume
    ChatInterrupts(routes.source, settings, routes.threads, routes.runs, routes.streams).register_routes(blueprint)
    instrument(blueprint, source, settings)  # metrics and traces (issue 29): before the guards, to see refusals
    _guard(blueprint, settings)
    return blueprint


def _guard(blueprint: Blueprint, settings: StreamSettings) -> None:
    """Origins, body size, headers and errors for the blueprint's routes only: the host app's own routes and
    handlers stay as they are."""
    origins = OriginPolicy(settings.allowed_origins)

    @blueprint.before_request
    def check_request() -> Response | None:
        refused = origins.check(request)
        if refused is not None:
            return refused
        request.max_content_length = settings.max_body_bytes
        # A chunked request body has no Content-Length to check up front, and werkzeug silently cuts it
        # at the limit (the cut JSON would then be refused as malformed). Reading it whole, then one byte
        # more, raises the honest 413 instead.
        if request.method == "POST" and request.content_length is None:
            request.get_data(cache=True)
            request.stream.read(1)
        return None

    @blueprint.after_request
    def add_headers(response: Response) -> Response:
        origins.add_cors_headers(request, response)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @blueprint.errorhandler(ChatError)
    def chat_error(error: ChatError) -> tuple[Response, int]:
        return jsonify(error=error.message), error.status

    @blueprint.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return json_http_error(error, settings.max_body_bytes)

    @blueprint.errorhandler(Exception)
    def unexpected_error(error: Exception) -> tuple[Response, int]:
        log.error("the source failed before streaming", exc_info=error)
        return jsonify(error=public_message(error)), 500


def json_http_error(error: HTTPException, max_body_bytes: int) -> tuple[Response, int]:
    """An HTTP error in Deep Chat's format, `{"error": "..."}`, with a message that says what to do."""
    messages = {
        404: "no such route: the chat routes are POST chat-stream and POST chat",
        405: f"method {request.method} is not allowed here",
        413: f"the request body is larger than the {max_body_bytes:,}-byte limit",
    }
    status = error.code or 500
    return jsonify(error=messages.get(status, error.description or error.name)), status
