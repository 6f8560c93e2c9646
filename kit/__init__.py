"""Stream LLM output into the Deep Chat web component from Flask, over Server-Sent Events.

Every name a user needs comes from here (and the notebook helpers from `kit.notebook`); where a name lives
inside the kit may change, its name here does not. `create_app(source)` is a whole app, `create_blueprint`
the same chat to mount in an app you already have; a source is a function of the messages, a LangChain
Runnable, a LangGraph graph, a legacy chain or a fixed str.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kit.adapters.callbacks import callback_source
    from kit.adapters.graphs import graph_source
    from kit.adapters.inputs import history_input, last_user_text
    from kit.adapters.ready_made import demo_chain, openai_chat_model
    from kit.adapters.runnables import runnable_source
    from kit.errors import ChatError, ServiceBusy
    from kit.model.chat_model import ChatLlama
    from kit.model.engine import close_engines
    from kit.model.settings import LlamaSettings
    from kit.model.source import LlamaSource
    from kit.notebook import serve, show, stop_all
    from kit.pipeline.cancel import CancelToken, end_open_streams
    from kit.pipeline.granularity import split_graphemes, split_words
    from kit.pipeline.observe import StreamObserver
    from kit.pipeline.settings import StreamSettings
    from kit.pipeline.sources import Role, texts
    from kit.pipeline.streaming import INTERRUPTED
    from kit.serving.client import chat_body, iter_stream, stream_chat
    from kit.serving.demo import DEMO_TEXT, SENT_EMAILS, demo_agent
    from kit.testing.fakes import EchoSource, ScriptedSource
    from kit.testing.tool_model import ScriptedToolModel
    from kit.threads.ids import THREAD_ID_HEADER
    from kit.threads.store import open_store
    from kit.web.app import create_app
    from kit.web.blueprint import create_blueprint
    from kit.web.observers import add_observer

__version__ = "0.1.0"

# The public names load on first use, not with the package: gunicorn imports `kit.serving.production` (its config)
# in the master before a gevent worker monkey-patches, and whatever the package imported by then (Flask,
# the streaming module's locks) would keep the unpatched blocking primitives. Each name: the module it lives in.
_HOMES = {
    # the chat
    "create_app": "kit.web.app",
    "create_blueprint": "kit.web.blueprint",
    "StreamSettings": "kit.pipeline.settings",
    "Role": "kit.pipeline.sources",
    "ChatError": "kit.errors",
    "ServiceBusy": "kit.errors",
    "CancelToken": "kit.pipeline.cancel",
    "INTERRUPTED": "kit.pipeline.streaming",
    "end_open_streams": "kit.pipeline.cancel",
    # sources
    "runnable_source": "kit.adapters.runnables",
    "callback_source": "kit.adapters.callbacks",
    "graph_source": "kit.adapters.graphs",
    "history_input": "kit.adapters.inputs",
    "last_user_text": "kit.adapters.inputs",
    "demo_chain": "kit.adapters.ready_made",
    "openai_chat_model": "kit.adapters.ready_made",
    "ScriptedSource": "kit.testing.fakes",
    "EchoSource": "kit.testing.fakes",  # issue 27: tells runs apart, records what each received
    "DEMO_TEXT": "kit.serving.demo",
    "demo_agent": "kit.serving.demo",
    # approvals: the demo agent's send_email and a scripted tool-calling model (docs/approvals.md)
    "SENT_EMAILS": "kit.serving.demo",
    "ScriptedToolModel": "kit.testing.tool_model",
    # threads: conversations kept on the server (docs/threads.md)
    "THREAD_ID_HEADER": "kit.threads.ids",
    "open_store": "kit.threads.store",
    # the embedded model
    "ChatLlama": "kit.model.chat_model",
    "LlamaSource": "kit.model.source",
    "LlamaSettings": "kit.model.settings",
    "close_engines": "kit.model.engine",
    # the pipeline's stages, for those who compose their own
    "texts": "kit.pipeline.sources",
    "split_words": "kit.pipeline.granularity",
    "split_graphemes": "kit.pipeline.granularity",
    # watching and calling a chat
    "StreamObserver": "kit.pipeline.observe",
    "Usage": "kit.pipeline.usage",
    "add_observer": "kit.web.observers",
    "stream_chat": "kit.serving.client",
    "iter_stream": "kit.serving.client",
    "chat_body": "kit.serving.client",
    # notebooks (also in kit.notebook, with the inspector and plots)
    "serve": "kit.notebook",
    "show": "kit.notebook",
    "stop_all": "kit.notebook",
}
__all__ = [
    "DEMO_TEXT",
    "INTERRUPTED",
    "SENT_EMAILS",
    "THREAD_ID_HEADER",
    "CancelToken",
    "ChatError",
    "ChatLlama",
    "EchoSource",
    "LlamaSettings",
    "LlamaSource",
    "Role",
    "ScriptedSource",
    "ScriptedToolModel",
    "ServiceBusy",
    "StreamObserver",
    "StreamSettings",
    "Usage",
    "add_observer",
    "callback_source",
    "chat_body",
    "close_engines",
    "create_app",
    "create_blueprint",
    "demo_agent",
    "demo_chain",
    "end_open_streams",
    "graph_source",
    "history_input",
    "iter_stream",
    "last_user_text",
    "open_store",
    "openai_chat_model",
    "runnable_source",
    "serve",
    "show",
    "split_graphemes",
    "split_words",
    "stop_all",
    "stream_chat",
    "texts",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
