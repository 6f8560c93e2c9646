"""The built-in demos behind `python -m kit serve --demo word|char|chain|agent`: a paced scripted text, a chain,
or an agent with a tool and memory across turns."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from kit.pipeline.granularity import splitter
from kit.testing.fakes import ScriptedSource
from kit.web.app import create_app

DEMO_TEXT = (
    "Streaming makes a chatbot feel alive: the reply appears as it is written, not all at once. "
    "This demo streams a fixed text through the kit's pipeline, so you can watch **markdown**, "
    "emoji like 👩‍💻, 👍🏽 and 🇫🇷, accents like é and ñ, and other scripts such as 日本語, "
    "العربية and ग्रन्थ arrive without a single broken character.\n\n"
    "1. Words keep their spaces.\n2. Characters stay whole, even when a token ends mid-emoji.\n"
    "3. Fast streams are coalesced so the browser stays smooth."
)


def demo_source(granularity: str, delay_ms: float) -> ScriptedSource:
    """The demo text cut at `granularity` and paced at one piece every `delay_ms` milliseconds."""
    pieces = list(splitter(granularity)([DEMO_TEXT]))
    return ScriptedSource(pieces, delay_s=delay_ms / 1000)


DEMOS = ("word", "char", "chain", "agent", "approvals")
THREAD_STORE_ENV = "KIT_THREAD_STORE"  # `serve --thread-store`: read by each gunicorn worker too
AGENT_SYSTEM_PROMPT = "You are a friendly assistant. Answer in one or two short sentences."


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 degrees in {city}."  # a demo: no weather service is called


SENT_EMAILS: list[dict[str, str]] = []
"""What the demo's `send_email` "sent" in this process (a demo: no mail leaves the machine)."""


def send_email(to: str, subject: str, body: str) -> str:
    """Send an email to someone. A person approves, edits or rejects each call before it runs."""
    SENT_EMAILS.append({"to": to, "subject": subject, "body": body})
    return f"Email to {to} sent: {subject}"


def demo_agent(store: Any = None, model: Any = None, *, approvals: bool = False) -> Any:
    """The agent behind `serve --demo agent`: the embedded model with a weather tool (LangChain's
    `create_agent`), compiled with LangGraph's checkpointer on the thread store (SQLite by default), so it
    remembers each thread's earlier turns. `store`: a ThreadStore, a path or a `postgresql://` URL.

    `approvals=True` (`serve --demo approvals`) adds a `send_email` tool that waits for a person to approve, edit
    or reject each call (`HumanInTheLoopMiddleware`; docs/approvals.md). It is off by default because the small
    embedded model, given two tools, often picks the wrong one."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    from kit.model.chat_model import ChatLlama
    from kit.threads.store import open_store

    model = model if model is not None else ChatLlama(max_tokens=64, temperature=0, seed=1)
    saver = open_store(store).checkpointer()
    decisions: list[Any] = ["approve", "edit", "reject"]
    asked = {"allowed_decisions": decisions, "description": "The assistant wants to send this email."}
    middleware = [HumanInTheLoopMiddleware(interrupt_on={"send_email": asked})] if approvals else []
    tools = [send_email, get_weather] if approvals else [get_weather]
    return create_agent(
        model, tools=tools, system_prompt=AGENT_SYSTEM_PROMPT, middleware=middleware, checkpointer=saver
    )


def demo_agent_app(store: Any = None, model: Any = None, *, approvals: bool = False, **options: Any) -> Flask:
    """`create_app` around `demo_agent`: tool calls and results in a steps bubble, the answer after them;
    `model` replaces the embedded one (a scripted model in tests and notebooks); `options` go to `create_app`."""
    from kit.adapters.graphs import graph_source
    from kit.model.chat_model import ChatLlama
    from kit.threads.store import open_store

    store = open_store(store)
    model = model if model is not None else ChatLlama(max_tokens=64, temperature=0, seed=1)
    # The model sits inside the agent's node: named here, its fair queue admits a request before the first byte.
    models = [model] if isinstance(model, ChatLlama) else []
    source = graph_source(demo_agent(store, model, approvals=approvals), steps_role="steps", models=models)
    return create_app(source, thread_store=store, title="Deep Chat kit: agent demo", **options)


def build_demo_app(demo: str, delay_ms: float, **options: Any) -> Flask:
    """The app behind `serve --demo NAME` (and, in each gunicorn worker, `serve --prod --demo NAME`, with
    `metrics=True`); `options` are `create_app`'s."""
    store = os.environ.get(THREAD_STORE_ENV)  # None: kit-threads.sqlite in the working directory
    if demo in ("agent", "approvals"):
        return demo_agent_app(store, approvals=demo == "approvals", **options)
    if demo == "chain":  # a LangChain chain on the embedded model; LangChain is imported for this demo only
        from kit.adapters.ready_made import demo_chain

        return create_app(demo_chain(), title="Deep Chat kit: chain demo", thread_store=store, **options)
    source = demo_source(demo, delay_ms)
    title = f"Deep Chat kit: {demo} demo"
    return create_app(source, granularity=demo, title=title, thread_store=store, **options)
