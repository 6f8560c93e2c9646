"""Stream LLM output into the Deep Chat web component from Flask, over Server-Sent Events.

The public names here: `create_app(source)` (the Flask app), `ChatError` and `ServiceBusy` (errors a source
raises to tell the client what went wrong, with a status), `CancelToken` (set when the client leaves).
Beyond them, each package's docstring says what it offers: `kit.notebook` (serve, show), `kit.model`
(ChatLlama, LlamaSource, LlamaSettings), `kit.adapters` (runnable_source, callback_source, graph_source,
openai_chat_model), `kit.serving` (the servers, `kit doctor`, the SSE client).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kit.errors import ChatError, ServiceBusy
    from kit.pipeline.pump import CancelToken
    from kit.web.app import create_app

__all__ = ["CancelToken", "ChatError", "ServiceBusy", "create_app"]
__version__ = "0.1.0"

# The public names load on first use, not with the package: gunicorn imports `kit.serving.production` (its config)
# in the master before a gevent worker monkey-patches, and whatever the package imported by then (Flask,
# the streaming module's locks) would keep the unpatched blocking primitives.
_HOMES = {
    "create_app": "kit.web.app",
    "ChatError": "kit.errors",
    "ServiceBusy": "kit.errors",
    "CancelToken": "kit.pipeline.pump",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
