"""`create_app`: a Flask app of its own around the chat's Blueprint."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from kit.pipeline.settings import StreamSettings
from kit.pipeline.sources import Source
from kit.web.blueprint import create_blueprint, json_http_error


def create_app(source: Source, settings: StreamSettings | None = None, **options: Any) -> Flask:
    """An app that serves one chat at its root: the routes of `create_blueprint`, and JSON errors for routes
    and methods it does not have. `options` are `StreamSettings` fields (granularity="word", ...).

    >>> app = create_app(lambda messages: ["Hello", ", ", "world"], granularity="word")
    >>> app.test_client().post("/chat", json={"messages": [{"role": "user", "text": "Hi"}]}).json
    {'text': 'Hello, world'}
    """
    settings = (settings or StreamSettings()).with_options(**options)
    app = Flask(__name__, static_folder=None)  # the blueprint serves the page's static files
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["KIT_TITLE"] = settings.title  # kit.notebook.serve names a server after it
    app.register_blueprint(create_blueprint(source, settings, name="kit_chat"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return json_http_error(error, settings.max_body_bytes)

    return app
