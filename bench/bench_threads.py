"""Threads: time to first text at turn 10 of a checkpointed graph against turn 1, and the reload of a 50-message
thread in chromium, on SQLite and on PostgreSQL.

- Turns: a one-node graph on the embedded model, compiled with LangGraph's SQLite checkpointer, answers ten
  turns over a real server as the kit's page sends them; the graph's input is the new message only, the model
  still reads the whole conversation from the checkpoint. Beside it: the same graph without a checkpointer (the
  page's history is the input; each series asks its own questions, so neither runs on the other's cached
  prefix) and the floor, the model's own first token for the turn-10 prompt it has just read.
- Reload: the kit's page in chromium on a thread of 50 messages; from navigation start to the 50 restored bubbles
  on screen, against the same page on an empty thread (page, bundle and an empty thread's request: the floor).

    python -m bench.bench_threads [--runs 3] [--postgres auto|postgresql://...] [--json out.json]
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.store_figures import describe_medians, main, on_each_store
from kit import create_app
from kit.serving.client import Received, chat_body, iter_stream
from kit.serving.server import BackgroundServer
from kit.threads.ids import THREAD_ID_HEADER, new_thread_id
from kit.threads.store import SqliteThreadStore, ThreadStore

MAX_TOKENS = 24


def questions(conversation: int) -> list[str]:
    """Ten questions of their own for each conversation: the engine reuses a cached prefix across requests, so
    two series asking the same words would time one series on the other's cache."""
    return [f"Tell me one short fact about the number {10 * conversation + n}." for n in range(1, 11)]


def _graph(model: Any, saver: Any) -> Any:
    from langchain_core.messages import BaseMessage
    from langgraph.graph import START, MessagesState, StateGraph

    def answer(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph.compile(checkpointer=saver)


def _turns(url: str, thread_id: str, conversation: int) -> Iterator[tuple[float, int]]:
    """Ten turns as the kit's page sends them (the whole visible history): each turn's TTFT and body size."""
    history: list[dict[str, str]] = []
    for question in questions(conversation):
        body = chat_body(question, history)
        asked, first, text = time.perf_counter(), float("nan"), ""
        for item in iter_stream(url + "chat-stream", body, headers={THREAD_ID_HEADER: thread_id}, timeout=300):
            if isinstance(item, Received) and item.payload and item.payload.get("text"):
                first = time.perf_counter() - asked if not text else first
                text += item.payload["text"]
        yield first, len(json.dumps(body))
        history += [{"role": "user", "text": question}, {"role": "ai", "text": text}]


def _bare_model_ttft(model: Any, graph: Any, thread_id: str) -> float:
    """The floor: the model's own first token for the prompt the graph's model read at turn 10, called at once
    after it (the engine has it cached: what is left is the model's own work for a first token)."""
    messages = graph.get_state({"configurable": {"thread_id": thread_id}}).values["messages"][:-1]
    asked = time.perf_counter()
    for chunk in model.stream(messages):
        if chunk.text:
            return time.perf_counter() - asked
    return float("nan")


def turn_figures(runs: int) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from kit.model.chat_model import ChatLlama

    model = ChatLlama(max_tokens=MAX_TOKENS, temperature=0, seed=1)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        saver = SqliteSaver(sqlite3.connect(Path(folder) / "graph.sqlite", check_same_thread=False))
        checkpointed, stateless = _graph(model, saver), _graph(model, None)
        store = SqliteThreadStore(Path(folder) / "threads.sqlite")
        with (
            BackgroundServer(create_app(checkpointed, thread_store=store)) as memory,
            BackgroundServer(create_app(stateless, thread_store=store)) as plain,
        ):
            next(_turns(plain.url, new_thread_id(), 0))  # warm-up: the model loads
            for run_index in range(runs):
                thread_id = new_thread_id()
                kept = list(_turns(memory.url, thread_id, 1 + 2 * run_index))
                sent = list(_turns(plain.url, new_thread_id(), 2 + 2 * run_index))
                for name, value in (
                    ("checkpointed turn 1 ttft_s", kept[0][0]),
                    ("checkpointed turn 10 ttft_s", kept[-1][0]),
                    ("history-fed turn 1 ttft_s", sent[0][0]),
                    ("history-fed turn 10 ttft_s", sent[-1][0]),
                    ("model alone, turn-10 prompt cached ttft_s", _bare_model_ttft(model, checkpointed, thread_id)),
                    ("request body turn 10 bytes", kept[-1][1]),
                    ("request body turn 1 bytes", kept[0][1]),
                ):
                    rows.setdefault(name, []).append(value)
    return _medians(rows)


def _medians(rows: dict[str, list[float]]) -> dict[str, Any]:
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in rows.items()}


# -- reload ----------------------------------------------------------------------------------------------

_COUNT_BUBBLES = """(wanted) => {
  const root = document.getElementById('chat') && document.getElementById('chat').shadowRoot;
  const shown = root ? root.querySelectorAll('.outer-message-container').length : 0;
  if (shown >= wanted) { window.__shownAt = performance.now(); return true; }
  return false;
}"""


def _fill(store: ThreadStore, thread_id: str, messages: int) -> None:
    turns = [
        {"role": "user" if i % 2 == 0 else "ai", "text": f"Message {i}: " + "some words of a reply " * 6}
        for i in range(messages)
    ]
    store.append(thread_id, turns)


def _page_load_ms(context: Any, url: str, thread_id: str, bubbles: int) -> float:
    page = context.new_page()
    try:
        page.add_init_script(f"localStorage.setItem('kit-thread:/', {json.dumps(thread_id)})")
        page.goto(url)
        page.wait_for_function(_COUNT_BUBBLES, arg=bubbles, polling="raf", timeout=30_000)
        return float(page.evaluate("window.__shownAt"))
    finally:
        page.close()


def reload_figures(store: ThreadStore, label: str, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from kit.testing.browser import CHROMIUM_ARGS, chromium_path

    full, empty = new_thread_id(), new_thread_id()
    _fill(store, full, 50)
    rows: dict[str, list[float]] = {}
    with BackgroundServer(create_app("Hi", thread_store=store)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()
        _page_load_ms(context, server.url, empty, 1)  # warm-up: the bundle in the cache, as on a reload
        for _run in range(max(runs, 5)):  # a few hundred ms each: more runs for a steadier median
            rows.setdefault(f"reload, empty thread (floor), {label}: ms", []).append(
                _page_load_ms(context, server.url, empty, 1)
            )
            rows.setdefault(f"reload, 50 messages, {label}: ms", []).append(
                _page_load_ms(context, server.url, full, 51)  # the intro and the 50 restored bubbles
            )
        browser.close()
    return _medians(rows)


def run(runs: int = 3, postgres_url: str | None = None) -> dict[str, Any]:
    """Every figure; PostgreSQL ones when a URL is given (bench.run_all starts a throwaway cluster)."""
    return turn_figures(runs) | on_each_store(reload_figures, runs, postgres_url)


def describe(figures: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    return describe_medians("threads figure", figures)


if __name__ == "__main__":
    main(__doc__, run, describe)
